"""Settings of a fine-tuning run (names follow transformers' TrainingArguments), validated
on construction, and the pure schedule math."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import LowbitError

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
#: transformers' --optim names; the bitsandbytes ones fall back to adamw_torch when it is absent.
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


@dataclass
class TrainConfig:
    output_dir: str
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 500  # 0: no intermediate checkpoints
    eval_steps: int = 0  # 0: evaluate before and after training only
    gradient_checkpointing: bool = False
    seed: int = 42
    optim: str = "adamw_torch"

    def __post_init__(self) -> None:
        positive = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "logging_steps")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise LowbitError(f"--{name.replace('_', '-')} {v} must be a positive integer")
        for name in ("save_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise LowbitError(f"--{name.replace('_', '-')} must be >= 0 (0 turns it off)")
        if not self.learning_rate > 0:
            raise LowbitError(f"--learning-rate {self.learning_rate} must be positive, e.g. 2e-4")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise LowbitError("give --max-steps > 0 or --num-train-epochs > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise LowbitError(f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise LowbitError(f"--lr-scheduler-type {self.lr_scheduler_type}: choose one of {', '.join(SCHEDULERS)}")
        if self.optim not in OPTIMIZERS:
            raise LowbitError(f"--optim {self.optim}: choose one of {', '.join(OPTIMIZERS)}")
        if self.max_grad_norm < 0:
            raise LowbitError("--max-grad-norm must be >= 0 (0 turns clipping off)")

    def to_dict(self) -> dict:
        return asdict(self)

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the run: max_steps, or epochs x updates per epoch."""
        if self.max_steps > 0:
            return self.max_steps
        return max(1, math.ceil(self.num_train_epochs * self.updates_per_epoch(n_examples)))

    def updates_per_epoch(self, n_examples: int) -> int:
        micro = math.ceil(n_examples / self.per_device_train_batch_size)
        return math.ceil(micro / self.gradient_accumulation_steps)

    def warmup_steps(self, total: int) -> int:
        return math.ceil(self.warmup_ratio * total)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based), as
    transformers' schedulers: linear warmup, then linear / cosine decay to 0 at ``total``
    (or constant). Unlike transformers, the first warmup step is not taken at lr 0."""
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant_with_warmup":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
