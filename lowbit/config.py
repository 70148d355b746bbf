"""Typed, validated configuration; the one place where settings are checked.

``QuantConfig`` says how weights are quantized and is what a checkpoint's config.json holds
under ``quantization_config``; ``CalibrationConfig`` says which data calibrated methods see.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import LowbitError
from .formats import SUPPORTED_BITS

#: Every quantization type the CLI and API name. Not all are implemented by every build:
#: ``lowbit.algorithms.ALGORITHMS`` holds those that are.
METHODS = ("rtn", "gptq", "awq", "nf4", "fp4", "int8")
#: Methods that produce group-wise integer weights (the QuantLinear layout).
INT_GROUP_METHODS = ("rtn", "gptq", "awq")
#: Default symmetry of each integer method, as the reference implementations use it.
DEFAULT_SYM = {"rtn": True, "gptq": True, "awq": False}

#: Layout version of lowbit's own checkpoints; bump when the meaning of a tensor changes.
FORMAT_VERSION = 1
QUANT_METHOD = "lowbit"


@dataclass
class QuantConfig:
    """How a model's weights are quantized.

    group_size: columns per scale; -1 means one scale per output channel. A group size that
    does not divide in_features leaves a ragged (shorter) last group.
    """

    method: str = "rtn"
    bits: int = 4
    group_size: int = 128
    sym: bool | None = None
    act_order: bool = False
    true_sequential: bool = True
    damp_percent: float = 0.01
    static_groups: bool = False
    quantize_lm_head: bool = False
    modules_to_not_convert: list[str] = field(default_factory=list)
    format: str = "lowbit"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LowbitError(f"unknown quantization type '{self.method}': choose one of {', '.join(METHODS)}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in SUPPORTED_BITS:
            raise LowbitError(
                f"--bits {self.bits} is not supported: choose one of {', '.join(map(str, SUPPORTED_BITS))}"
            )
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or (
            self.group_size <= 0 and self.group_size != -1
        ):
            raise LowbitError(
                f"--group-size {self.group_size} is invalid: use a positive number of columns "
                "(e.g. 128) or -1 for one group per output channel"
            )
        if not 0 <= self.damp_percent < 1:
            raise LowbitError(f"damp_percent {self.damp_percent} must be in [0, 1), e.g. 0.01")
        if self.sym is None:
            self.sym = DEFAULT_SYM.get(self.method, True)
        self.modules_to_not_convert = list(self.modules_to_not_convert)

    def to_dict(self) -> dict:
        """The ``quantization_config`` entry of config.json."""
        d = asdict(self)
        d["desc_act"] = d.pop("act_order")
        return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """Parse a ``quantization_config``; a malformed one raises LowbitError naming the field."""
        if not isinstance(d, dict):
            raise LowbitError(f"quantization_config must be a JSON object, got {type(d).__name__}")
        if d.get("quant_method") != QUANT_METHOD:
            raise LowbitError(f"quantization_config has quant_method {d.get('quant_method')!r}, not {QUANT_METHOD!r}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise LowbitError(
                f"checkpoint format_version {version!r} is not supported by this lowbit "
                f"(supports {FORMAT_VERSION}): upgrade lowbit or re-quantize the model"
            )
        d = dict(d)
        d.pop("quant_method")
        d.pop("format_version")
        if "desc_act" in d:
            d["act_order"] = d.pop("desc_act")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LowbitError(f"quantization_config has unknown field(s) {unknown}: the checkpoint is malformed")
        for key in ("method", "bits", "group_size"):
            if key not in d:
                raise LowbitError(f"quantization_config is missing '{key}': the checkpoint is malformed")
        try:
            return cls(**d)
        except TypeError as e:
            raise LowbitError(f"quantization_config is malformed: {e}") from None


@dataclass
class CalibrationConfig:
    """Which text calibrated methods (GPTQ, AWQ) see: n_samples windows of seq_len tokens."""

    dataset: str | None = None
    split: str = "train"
    n_samples: int = 512
    seq_len: int = 1500
    seed: int = 0
    text_column: str | None = None

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise LowbitError(f"--calibration-samples {self.n_samples} must be at least 1")
        if self.seq_len < 2:
            raise LowbitError(f"--max-seq-length {self.seq_len} must be at least 2")
