"""``lowbit export``: a quantized checkpoint in one format -> the same weights in another.

The source is read into QuantLinear layers (any format ``lowbit.load`` reads) and written by the
target format's writer: codes, zero points and scales move bit for bit; only their packing and
the config change. lowbit_report.json travels along with an ``export`` record.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import __version__
from ..errors import LowbitError
from ..models.checkpoint import REPORT_FILE, disk_bytes, read_config, save_checkpoint
from ..models.load import load, parse_dtype, resolve_source
from ..outdir import atomic_output_dir, check_output_dir
from . import WRITERS, check_format
from .common import quant_linears

log = logging.getLogger(__name__)


def source_dtype(config: dict) -> torch.dtype:
    """The float dtype a checkpoint's config.json names (float32 when it names none)."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    try:
        return parse_dtype(str(name).replace("torch.", "")) or torch.float32
    except LowbitError:
        return torch.float32


def export_checkpoint(src: str | Path, output_dir: str | Path, fmt: str, overwrite: bool = False,
                      **options) -> dict:
    """Convert the quantized checkpoint ``src`` into ``fmt`` in ``output_dir``; returns the report."""
    check_format(fmt)
    check_output_dir(output_dir, overwrite)
    kind, where = resolve_source(src)
    if kind not in ("folder", "demo"):
        raise LowbitError(f"{src} is not a checkpoint folder: lowbit export converts a local quantized checkpoint")
    config = read_config(where)
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        raise LowbitError(f"{src} is not quantized: run `lowbit quantize --model-path {src} --format {fmt}` instead")
    t0 = time.perf_counter()
    model = load(src, device="cpu", dtype=source_dtype(config))
    cfg = replace(model.quant_config, format=fmt)
    if fmt != "lowbit":
        quant_linears(model, fmt)  # refuse other layer types before writing anything
    report = _source_report(Path(where))
    with atomic_output_dir(output_dir, overwrite) as tmp:
        if fmt == "lowbit":
            save_checkpoint(model, model.tokenizer, cfg, tmp)
            written = cfg.to_dict()
        else:
            written = WRITERS[fmt](model, model.tokenizer, cfg, tmp, **options)
        report["export"] = {
            "lowbit_version": __version__,
            "source": str(src),
            "source_format": qc.get("quant_method"),
            "format": fmt,
            "quantization_config": written,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        report["bytes_on_disk"] = disk_bytes(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def _source_report(folder: Path) -> dict:
    path = folder / REPORT_FILE
    if path.is_file():
        try:
            report = json.loads(path.read_text())
            if isinstance(report, dict):
                return report
        except ValueError:
            log.warning("%s is not valid JSON; not carried over", path)
    return {"lowbit_version": __version__}
