"""Fold a LoRA adapter into a float copy of its base: W' = W + B @ A * scaling.

The sum is taken in float32 and rounded once to the output dtype, so a float32 merge is
exactly ``W + (B @ A) * scaling`` as torch computes it in float32.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import LowbitError
from .adapters import Adapter, check_fits, read_adapter

log = logging.getLogger(__name__)


def merged_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """w [out, in] + (b [out, r] @ a [r, in]) * scaling, summed in float32 and rounded once
    to ``dtype`` (default: w.dtype)."""
    return (w.float() + (b.float() @ a.float()) * scaling).to(dtype or w.dtype)


def merge_into(model: nn.Module, adapter: Adapter, where: str = "adapter", dtype: torch.dtype | None = None) -> list[str]:
    """Replace the weights of ``model``'s adapted nn.Linear layers by their merged values
    (in ``dtype``, default: the layer's)."""
    check_fits(model, adapter, where)
    for name, (a, b) in adapter.layers.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise LowbitError(f"{name} is a {type(layer).__name__}, not a float Linear: merge into the unquantized base")
        with torch.no_grad():
            layer.weight.data = merged_weight(layer.weight, a, b, adapter.scaling[name], dtype)
    return list(adapter.layers)


def _stored_dtype(base: str) -> torch.dtype:
    """The dtype a base model's config.json declares (float32 when it declares none)."""
    from ..models.checkpoint import read_config
    from ..models.load import parse_dtype, resolve_source

    kind, where = resolve_source(base)
    if kind not in ("folder", "demo"):
        return torch.float32
    cfg = read_config(where)
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return parse_dtype(name) or torch.float32


def merge(base: str, adapter_dir: str | Path, output_dir: str | Path, dtype: str | torch.dtype | None = None,
          overwrite: bool = False) -> dict:
    """Write base + adapter as a plain Hugging Face model folder. dtype: of the saved weights
    (default: the base's). Returns a small report."""
    from ..models.load import load_float, parse_dtype
    from ..outdir import atomic_output_dir, check_output_dir

    t0 = time.perf_counter()
    check_output_dir(output_dir, overwrite)  # fail before the slow load
    adapter = read_adapter(adapter_dir)
    claimed = adapter.config.get("base_model_name_or_path")
    if claimed and str(claimed) != str(base):
        log.warning("adapter %s was trained on %s; merging it into %s", adapter_dir, claimed, base)
    stored = _stored_dtype(base)
    out_dtype = parse_dtype(dtype) or stored
    # The base is read in its own precision (a bf16 8B model needs 16 GB, not 32) unless the
    # output is float32; each merged weight is summed in float32 and rounded once.
    model, tokenizer = load_float(base, dtype=torch.float32 if out_dtype == torch.float32 else stored)
    names = merge_into(model, adapter, str(adapter_dir), out_dtype)
    model = model.to(out_dtype)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return {"layers": len(names), "dtype": str(out_dtype).replace("torch.", ""),
            "seconds": time.perf_counter() - t0, "output_dir": str(output_dir)}
