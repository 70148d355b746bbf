"""Where a model's bytes are: by layer, by kind of layer, bits per quantized parameter, and
a measured table of one model loaded at fp32 / fp16 / int8 / nf4 / nf4 + double quant.

Everything here counts the tensors a loaded model holds (parameters and buffers, tied
tensors once), the same rule as ``memory.memory_footprint``: figures are measured on real
models, not computed from a formula.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .memory import memory_footprint

#: Module types whose weight is quantized, by class name (so this file imports no nn code).
QUANTIZED_TYPES = ("QuantLinear", "Linear4bit", "Linear8bitLt")


def _own_tensors(module: nn.Module, seen: set) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if t.device.type != "meta" and key in seen:
            continue
        seen.add(key)
        out.append((name, t))
    return out


def bytes_by_layer(model: nn.Module) -> list[dict]:
    """One row per module that holds tensors: name, type, bytes, dtypes, and for quantized
    layers the number of weights they stand for. Tied tensors count once (first holder)."""
    seen: set = set()
    rows = []
    for name, module in model.named_modules():
        tensors = _own_tensors(module, seen)
        if not tensors:
            continue
        kind = type(module).__name__
        row = {"layer": name, "type": kind, "bytes": sum(t.numel() * t.element_size() for _, t in tensors),
               "dtypes": sorted({str(t.dtype).replace("torch.", "") for _, t in tensors})}
        if kind in QUANTIZED_TYPES:
            row["weights"] = module.in_features * module.out_features
            row["weight_bytes"] = sum(t.numel() * t.element_size() for n, t in tensors if n != "bias")
        rows.append(row)
    return rows


def bytes_by_type(model: nn.Module) -> dict[str, int]:
    """Bytes by module type (Linear4bit, Embedding, LlamaRMSNorm, ...)."""
    out: dict[str, int] = {}
    for row in bytes_by_layer(model):
        out[row["type"]] = out.get(row["type"], 0) + row["bytes"]
    return out


def bits_per_quantized_weight(model: nn.Module) -> float | None:
    """8 x (bytes of the quantized layers' weight tensors: codes, scales, absmax, nested
    absmax/offset; bias excluded) / number of weights they stand for. None if none."""
    rows = [r for r in bytes_by_layer(model) if "weights" in r]
    if not rows:
        return None
    return 8 * sum(r["weight_bytes"] for r in rows) / sum(r["weights"] for r in rows)


@dataclass
class FormatRow:
    format: str
    memory_bytes: int
    quantized_weights: int
    bits_per_quantized_weight: float | None
    float_part_bytes: int


#: (row label, lowbit.load keyword arguments). Quantized rows keep their float parts in fp16,
#: as a GPU run would.
FORMATS = (
    ("fp32", dict(dtype=torch.float32)),
    ("fp16", dict(dtype=torch.float16)),
    ("int8", dict(dtype=torch.float16, load_in_8bit=True)),
    ("nf4", dict(dtype=torch.float16, load_in_4bit=True, bnb_4bit_quant_type="nf4")),
    ("nf4+dq", dict(dtype=torch.float16, load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)),
)


def measure(model: nn.Module, label: str) -> FormatRow:
    rows = bytes_by_layer(model)
    quant = [r for r in rows if "weights" in r]
    return FormatRow(
        format=label,
        memory_bytes=memory_footprint(model),
        quantized_weights=sum(r["weights"] for r in quant),
        bits_per_quantized_weight=bits_per_quantized_weight(model),
        float_part_bytes=sum(r["bytes"] for r in rows if "weights" not in r),
    )


def format_table(src: str, formats=FORMATS) -> list[dict]:
    """Load ``src`` once per format (on CPU, quantizing while loading) and measure each."""
    from ..models.load import load

    out = []
    for label, kwargs in formats:
        model = load(src, device_map="cpu", **kwargs)
        out.append(asdict(measure(model, label)))
        del model
    return out


def render_format_table(rows: list[dict]) -> str:
    base = rows[0]["memory_bytes"] if rows else 1
    lines = [f"{'format':<8} {'memory MiB':>11} {'vs ' + rows[0]['format']:>8} {'quantized weights':>18} "
             f"{'bits/q.weight':>13} {'float parts MiB':>16}"]
    for r in rows:
        bits = "-" if r["bits_per_quantized_weight"] is None else f"{r['bits_per_quantized_weight']:.3f}"
        lines.append(f"{r['format']:<8} {r['memory_bytes'] / 2**20:>11.1f} {r['memory_bytes'] / base:>8.3f} "
                     f"{r['quantized_weights']:>18,} {bits:>13} {r['float_part_bytes'] / 2**20:>16.1f}")
    return "\n".join(lines)


def render_layers(rows: list[dict]) -> str:
    width = max(len(r["layer"]) for r in rows) if rows else 5
    lines = [f"{'layer':<{width}}  {'type':<14} {'bytes':>12}  dtypes"]
    for r in rows:
        lines.append(f"{r['layer']:<{width}}  {r['type']:<14} {r['bytes']:>12,}  {','.join(r['dtypes'])}")
    return "\n".join(lines)


__all__ = ["FORMATS", "bits_per_quantized_weight", "bytes_by_layer", "bytes_by_type", "format_table", "measure",
           "render_format_table", "render_layers"]
