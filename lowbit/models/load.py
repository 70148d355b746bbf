"""``lowbit.load``: one entry point for every kind of model source.

Sources: ``"demo"``; a .gguf file; a local Hugging Face folder (float, or a checkpoint in a
format named in ``READERS``); a hub id. Returns a torch model in eval mode with its
tokenizer at ``model.tokenizer``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import LowbitError
from . import checkpoint, demo, hf

log = logging.getLogger(__name__)

#: Readers of quantized checkpoints by their config.json ``quantization_config.quant_method``.
#: Each takes (folder, config dict, dtype) and returns the model on CPU.
def _export_reader(method: str) -> Callable[[Path, dict, "torch.dtype | None"], nn.Module]:
    """Other tools' formats live in lowbit.export, imported on first use (it imports models)."""

    def read(folder: Path, config: dict, dtype: "torch.dtype | None") -> nn.Module:
        from ..export import READERS as FORMAT_READERS

        return FORMAT_READERS[method](folder, config, dtype)

    return read


READERS: dict[str, Callable[[Path, dict, "torch.dtype | None"], nn.Module]] = {
    "lowbit": checkpoint.load_checkpoint,
    "gptq": _export_reader("gptq"),
    "awq": _export_reader("awq"),
    "compressed-tensors": _export_reader("compressed-tensors"),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | None":
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise LowbitError(f"unknown dtype '{dtype}': choose one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def default_dtype(device: str) -> torch.dtype:
    # CPUs run fp32 matmuls fastest and exactly; GPUs want 16-bit.
    return torch.float16 if str(device).startswith("cuda") else torch.float32


def resolve_source(src: "str | Path") -> tuple[str, Path | str]:
    """(kind, location): kind is 'demo', 'gguf', 'folder' or 'hub'."""
    s = str(src)
    if s == demo.DEMO_NAME:
        return "demo", demo.demo_dir()
    p = Path(s).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf", p
    if p.is_dir():
        return "folder", p
    if p.exists():
        raise LowbitError(f"{p} is not a model: pass a model folder, a .gguf file, a hub id or 'demo'")
    if hf.looks_like_hub_id(s):
        return "hub", s
    raise LowbitError(f"model path {s} does not exist: pass a model folder, a .gguf file, a hub id or 'demo'")


def load_float(src: "str | Path", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of an unquantized model, on CPU; refuses quantized checkpoints."""
    kind, where = resolve_source(src)
    if kind == "gguf":
        return hf.load_gguf(where, dtype)
    if kind in ("folder", "demo"):
        config = checkpoint.read_config(where)
        if "quantization_config" in config:
            raise LowbitError(
                f"{where} is already quantized ({config['quantization_config'].get('quant_method', '?')}): "
                "start from the unquantized model"
            )
    return hf.load_pretrained(where, dtype)


def load(src: "str | Path", device: str | None = None, dtype: "str | torch.dtype | None" = None,
         quantization_config: object = None, device_map: object = None, **quant_kwargs) -> nn.Module:
    """A ready model (eval mode, ``.generate``, tokenizer at ``model.tokenizer``).

    device: "cpu", "cuda", ... (default: cuda when available). dtype: of the float parts
    (default: float32 on CPU, float16 on CUDA).
    quantization_config (a lowbit BnbConfig, a dict or transformers' BitsAndBytesConfig),
    load_in_4bit / load_in_8bit / other BnbConfig fields as keywords, and device_map
    ("auto", "cpu", a dict): quantize a float model while loading it, see
    ``lowbit.models.onthefly``.
    """
    if quantization_config is not None or device_map is not None or quant_kwargs:
        return _load_on_the_fly(src, device, dtype, quantization_config, device_map, quant_kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(dtype) or default_dtype(device)
    kind, where = resolve_source(src)
    tokenizer = None
    if kind in ("folder", "demo"):
        config = checkpoint.read_config(where)
        if "quantization_config" not in config:  # older GPTQ/AWQ checkpoints: quantize_config.json
            from ..export import with_legacy_quantization_config

            config = with_legacy_quantization_config(where, config)
        qc = config.get("quantization_config")
        if qc is not None:
            method = qc.get("quant_method") if isinstance(qc, dict) else None
            if method not in READERS:
                raise LowbitError(
                    f"{where}: quantization_config has quant_method {method!r}; supported: {', '.join(READERS)}"
                )
            model = READERS[method](Path(where), config, dtype)
            tokenizer = hf.load_tokenizer(where)
        else:
            model, tokenizer = hf.load_pretrained(where, dtype)
    elif kind == "gguf":
        model, tokenizer = hf.load_gguf(where, dtype)
    else:
        model, tokenizer = hf.load_pretrained(where, dtype)
    model = model.to(device).eval()
    model.tokenizer = tokenizer
    return model


def _load_on_the_fly(src, device, dtype, quantization_config, device_map, quant_kwargs) -> nn.Module:
    from ..config import BnbConfig
    from .onthefly import load_on_the_fly

    if device is not None and device_map is not None:
        raise LowbitError("pass device or device_map, not both (device_map={'': device} is the same as device)")
    only_off = set(quant_kwargs) <= {"load_in_4bit", "load_in_8bit"} and not any(quant_kwargs.values())
    bnb = None if quantization_config is None and only_off else BnbConfig.from_any(quantization_config, **quant_kwargs)
    return load_on_the_fly(src, bnb, device_map if device_map is not None else device, dtype)
