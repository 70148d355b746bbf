"""Show a model's architecture, quantization method, bits, group size, bytes on disk and
bytes in memory (parameters and buffers, like transformers' get_memory_footprint)."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf file, hub id or 'demo'")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def describe(src: str) -> dict:
    from pathlib import Path

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
        "group_size": qc.group_size if qc else None,
        "sym": qc.sym if qc else None,
        "bytes_on_disk": on_disk,
        "memory_footprint": memory_footprint(model),
        "bytes_by_dtype": bytes_by_dtype(model),
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, int) and key.startswith(("bytes", "memory")):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    return 0
