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
#: Default of ``clip_search``: on for GPTQ, where it closed a further 10-14% of RTN's
#: perplexity gap on the demo model, off for RTN, where weight-error clipping raised
#: perplexity (README, "Calibrated quantization"). AWQ has its own output-error clip search.
DEFAULT_CLIP = {"gptq": True}

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
    # rtn / gptq: search a clipping ratio per group (formats.choose_qparams_clipped);
    # None = the method's default (DEFAULT_CLIP)
    clip_search: bool | None = None
    quantize_lm_head: bool = False
    modules_to_not_convert: list[str] = field(default_factory=list)
    format: str = "lowbit"
    # nf4 / fp4 / int8 (bitsandbytes-style) only; ignored by the integer methods.
    blocksize: int = 64
    double_quant: bool = True
    compute_dtype: str = "float32"
    int8_threshold: float = 6.0
    # int8: activation columns per scale (per token); 0 = the LLM.int8 paper's one scale per token.
    int8_act_block_size: int = 64

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
        if self.clip_search is None:
            self.clip_search = DEFAULT_CLIP.get(self.method, False)
        self.modules_to_not_convert = list(self.modules_to_not_convert)
        _check_bnb_fields(self)

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


# ---- bitsandbytes-style on-the-fly quantization (NF4/FP4, LLM.int8) ----

#: Bits each bitsandbytes-style method stores per weight; ``QuantConfig.bits`` is set from it.
BNB_BITS = {"nf4": 4, "fp4": 4, "int8": 8}
BNB_4BIT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def compute_dtype_name(dtype: object, what: str = "bnb_4bit_compute_dtype") -> str:
    """'float32' | 'float16' | 'bfloat16' from a torch.dtype or its name (None -> float32)."""
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in COMPUTE_DTYPES:
        raise LowbitError(f"{what} {dtype!r} is not supported: choose one of {', '.join(COMPUTE_DTYPES)}")
    return name


def _check_bnb_fields(cfg: "QuantConfig") -> None:
    if isinstance(cfg.blocksize, bool) or not isinstance(cfg.blocksize, int) or cfg.blocksize < 2 or cfg.blocksize % 2:
        raise LowbitError(f"blocksize {cfg.blocksize!r} is invalid: use an even number of weights, e.g. 64")
    if not isinstance(cfg.double_quant, bool):
        raise LowbitError(f"double_quant must be true or false, got {cfg.double_quant!r}")
    cfg.compute_dtype = compute_dtype_name(cfg.compute_dtype, "compute_dtype")
    if isinstance(cfg.int8_threshold, bool) or not isinstance(cfg.int8_threshold, (int, float)) or cfg.int8_threshold < 0:
        raise LowbitError(f"int8 threshold {cfg.int8_threshold!r} must be a number >= 0 (6.0 is usual; 0 disables outliers)")
    cfg.int8_threshold = float(cfg.int8_threshold)
    b = cfg.int8_act_block_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise LowbitError(f"int8 activation block size {b!r} is invalid: use a number of columns such as 64, "
                          "or 0 for one scale per token (the LLM.int8 paper's vector-wise quantization)")
    if cfg.method in BNB_BITS:
        cfg.bits = BNB_BITS[cfg.method]  # implied by the type: --bits does not apply


@dataclass
class BnbConfig:
    """On-the-fly quantization while loading, with bitsandbytes' / transformers' names.

    Exactly one of load_in_4bit / load_in_8bit. Differences from transformers'
    BitsAndBytesConfig: bnb_4bit_quant_type defaults to "nf4" (not "fp4"), and
    bnb_4bit_blocksize is settable (bitsandbytes fixes 64). ``from_any`` accepts this class,
    a dict, or a transformers ``BitsAndBytesConfig`` object (read through its attributes:
    bitsandbytes itself is not needed).

    llm_int8_skip_modules: layer names (full, or a dotted suffix such as "lm_head" or
    "mlp.down_proj") kept in 16 bit; None keeps the output layer (lm_head) in 16 bit, as
    transformers does. llm_int8_enable_fp32_cpu_offload: layers that a device_map puts on
    "cpu" stay unquantized in float32 and run there. llm_int8_act_block_size (lowbit's own):
    int8 activations get one scale per token and block of this many columns (64); 0 = one
    scale per token, as in the LLM.int8 paper and bitsandbytes.
    """

    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str | None = None
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_blocksize: int = 64
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_act_block_size: int = 64

    def __post_init__(self) -> None:
        for name in ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant", "llm_int8_enable_fp32_cpu_offload"):
            if not isinstance(getattr(self, name), bool):
                raise LowbitError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.load_in_4bit and self.load_in_8bit:
            raise LowbitError("load_in_4bit and load_in_8bit are both set: choose one")
        if not (self.load_in_4bit or self.load_in_8bit):
            raise LowbitError("the quantization config sets neither load_in_4bit nor load_in_8bit: set one of them")
        if self.bnb_4bit_quant_type not in BNB_4BIT_TYPES:
            raise LowbitError(
                f"unknown bnb_4bit_quant_type {self.bnb_4bit_quant_type!r}: choose one of {', '.join(BNB_4BIT_TYPES)}"
            )
        self.bnb_4bit_compute_dtype = compute_dtype_name(self.bnb_4bit_compute_dtype)
        if self.llm_int8_skip_modules is not None:
            if isinstance(self.llm_int8_skip_modules, str) or not all(
                isinstance(m, str) for m in self.llm_int8_skip_modules
            ):
                raise LowbitError(f"llm_int8_skip_modules must be a list of layer names, got {self.llm_int8_skip_modules!r}")
            self.llm_int8_skip_modules = list(self.llm_int8_skip_modules)
        self.to_quant_config()  # validates blocksize and threshold with the checkpoint's rules

    @property
    def method(self) -> str:
        return "int8" if self.load_in_8bit else self.bnb_4bit_quant_type

    def to_quant_config(self) -> QuantConfig:
        """The QuantConfig a checkpoint of this model records."""
        return QuantConfig(
            method=self.method, bits=BNB_BITS[self.method], blocksize=self.bnb_4bit_blocksize,
            double_quant=self.bnb_4bit_use_double_quant, compute_dtype=self.bnb_4bit_compute_dtype,
            int8_threshold=self.llm_int8_threshold, int8_act_block_size=self.llm_int8_act_block_size,
            modules_to_not_convert=list(self.llm_int8_skip_modules or []),
        )

    @classmethod
    def from_any(cls, obj: object = None, **overrides) -> "BnbConfig":
        """From a BnbConfig, a dict, or transformers' BitsAndBytesConfig; keyword overrides
        (e.g. load_in_4bit=True) apply on top. Unknown dict keys raise LowbitError."""
        known = [f.name for f in fields(cls)]
        values: dict = {}
        if obj is None:
            pass
        elif isinstance(obj, cls):
            values = asdict(obj)
        elif isinstance(obj, dict):
            d = {k: v for k, v in obj.items() if k not in _IGNORED_HF_KEYS}
            unknown = sorted(set(d) - set(known))
            if unknown:
                raise LowbitError(f"quantization_config has unknown key(s) {unknown}: known are {', '.join(known)}")
            values = d
        elif hasattr(obj, "load_in_4bit") and hasattr(obj, "load_in_8bit"):
            # transformers.BitsAndBytesConfig (or any object with the same attribute names)
            values = {k: getattr(obj, k) for k in known if hasattr(obj, k)}
        else:
            raise LowbitError(
                f"quantization_config of type {type(obj).__name__} is not understood: pass a lowbit BnbConfig, "
                "a dict, or a transformers BitsAndBytesConfig"
            )
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise LowbitError(f"unknown quantization option(s) {unknown}: known are {', '.join(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("llm_int8_threshold"), int) and not isinstance(values["llm_int8_threshold"], bool):
            values["llm_int8_threshold"] = float(values["llm_int8_threshold"])
        return cls(**values)


#: Keys of a transformers BitsAndBytesConfig dict that lowbit does not use.
_IGNORED_HF_KEYS = frozenset({"quant_method", "_load_in_4bit", "_load_in_8bit", "llm_int8_has_fp16_weight",
                              "bnb_4bit_quant_storage"})
