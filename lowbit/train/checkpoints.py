"""Training checkpoints (``<output_dir>/checkpoint-<step>``) and resuming from them.

A checkpoint holds the adapter (peft format, loadable on its own), ``optimizer.pt`` (the
optimizer's state dict, read back with ``weights_only=True``), ``rng_state.pt`` and
``trainer_state.json`` (step, log history, settings and the base model's fingerprint, which
resuming checks so that a checkpoint is never continued on another model).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import LowbitError
from ..outdir import atomic_output_dir
from .adapters import load_lora_weights, save_adapter
from .lora import LoraSettings

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
_CKPT = re.compile(r"checkpoint-(\d+)")


def lora_meta(settings: LoraSettings, names: list[str]) -> dict:
    return {"r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout, "layers": len(names),
            "target_modules": settings.target_modules}


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                    settings: LoraSettings, base_model: str) -> None:
    """Write a complete checkpoint folder atomically."""
    with atomic_output_dir(folder, overwrite=True) as tmp:
        save_adapter(model, tmp, settings, base_model)
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))


def find_checkpoint(spec: str, output_dir: Path) -> Path:
    """The checkpoint folder named by --resume-from-checkpoint: a path, or ``last`` (the
    highest step under output_dir)."""
    if spec in ("last", "latest", "true", "True"):
        found = sorted((p for p in output_dir.glob("checkpoint-*") if _CKPT.fullmatch(p.name) and p.is_dir()),
                       key=lambda p: int(_CKPT.fullmatch(p.name).group(1)))
        if not found:
            raise LowbitError(f"no checkpoint-* folder in {output_dir} to resume from: start without "
                              "--resume-from-checkpoint or pass a checkpoint path")
        return found[-1]
    p = Path(spec)
    if not (p / STATE_FILE).is_file():
        raise LowbitError(f"{p} is not a training checkpoint (no {STATE_FILE}): pass a checkpoint-<step> folder or 'last'")
    return p


def read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LowbitError(f"{folder / STATE_FILE} is unreadable ({e}): the checkpoint is damaged") from None


def check_compatible(state: dict, fingerprint: dict, lora: dict, folder: Path) -> None:
    """Refuse a checkpoint of another base model or of other LoRA settings."""
    theirs = state.get("fingerprint") or {}
    for key, mine in fingerprint.items():
        if theirs.get(key) != mine:
            raise LowbitError(
                f"checkpoint {folder} was trained on another model ({key} {theirs.get(key)!r}, this model "
                f"{mine!r}; base {state.get('base_model')!r}): resume with the same --model-path or start a new run"
            )
    for key in ("r", "alpha", "layers"):
        if state.get("lora", {}).get(key) != lora[key]:
            raise LowbitError(
                f"checkpoint {folder} has LoRA {key} {state.get('lora', {}).get(key)!r}, this run {lora[key]!r}: "
                "resume with the same --lora-r, --lora-alpha and --target-modules"
            )


def restore(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Load adapter weights, optimizer state and RNG state; returns the trainer state."""
    state = read_state(folder)
    load_lora_weights(model, folder)
    try:
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
        rng = torch.load(folder / RNG_FILE, weights_only=True)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise LowbitError(f"cannot restore the optimizer from {folder} ({str(e).splitlines()[0]}): "
                          "resume with the same --optim, or start a new run") from None
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
