"""Show a model's architecture, quantization method, bits, group size, bytes on disk and
bytes in memory (parameters and buffers, like transformers' get_memory_footprint)."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf file, hub id or 'demo'")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--by-layer", action="store_true", help="also list the bytes of every layer")
    p.add_argument("--formats", action="store_true",
                   help="measure the model loaded at fp32 / fp16 / int8 / nf4 / nf4+double-quant (a float model)")


def describe(src: str, by_layer: bool = False) -> dict:
    from pathlib import Path

    from ..config import BNB_BITS
    from ..evaluate.footprint import bits_per_quantized_weight, bytes_by_layer, bytes_by_type
    from ..evaluate.memory import bytes_by_dtype, memory_footprint
    from ..models.checkpoint import disk_bytes
    from ..models.load import load, resolve_source
    from ..models.registry import model_type

    kind, where = resolve_source(src)
    model = load(src, device="cpu")
    qc = getattr(model, "quant_config", None)
    on_disk = disk_bytes(where) if kind in ("folder", "demo") else (Path(where).stat().st_size if kind == "gguf" else None)
    return {
        "model": str(src),
        "architecture": model_type(model),
        "blocks": getattr(model.config, "num_hidden_layers", None),
        "hidden_size": getattr(model.config, "hidden_size", None),
        "method": qc.method if qc else "none",
        "bits": qc.bits if qc else None,
        "group_size": qc.group_size if qc and qc.method not in BNB_BITS else None,
        "sym": qc.sym if qc and qc.method not in BNB_BITS else None,
        **({"blocksize": qc.blocksize, "double_quant": qc.double_quant} if qc and qc.method in ("nf4", "fp4") else {}),
        **({"int8_threshold": qc.int8_threshold, "int8_act_block_size": qc.int8_act_block_size}
           if qc and qc.method == "int8" else {}),
        **({"compute_dtype": qc.compute_dtype} if qc and qc.method in BNB_BITS else {}),
        "bytes_on_disk": on_disk,
        "memory_footprint": memory_footprint(model),
        "bytes_by_dtype": bytes_by_dtype(model),
        "bytes_by_type": bytes_by_type(model),
        "bits_per_quantized_weight": bits_per_quantized_weight(model),
        **({"layers": bytes_by_layer(model)} if by_layer else {}),
    }


def run(args: argparse.Namespace) -> int:
    if args.formats:
        from ..evaluate.footprint import format_table, render_format_table

        rows = format_table(args.model)
        print(json.dumps(rows, indent=2) if args.json else render_format_table(rows))
        return 0
    info = describe(args.model, by_layer=args.by_layer)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    layers = info.pop("layers", None)
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, int) and key.startswith(("bytes", "memory")):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    if layers is not None:
        from ..evaluate.footprint import render_layers

        print(render_layers(layers))
    return 0
