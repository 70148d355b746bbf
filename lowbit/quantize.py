"""Quantize a model: walk its decoder blocks (from the registry) and swap quantized layers in.

``quantize_model`` works on a model in memory; ``quantize`` goes from a model path to a
finished checkpoint folder. Calibration-free methods (RTN) run here directly; calibrated
methods receive their statistics from ``lowbit.calibration``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .algorithms import ALGORITHMS
from .config import BNB_BITS, INT_GROUP_METHODS, CalibrationConfig, QuantConfig
from .errors import LowbitError
from .models import load_float, resolve_source
from .models.checkpoint import REPORT_FILE, cast_float_parameters, disk_bytes, read_config, save_checkpoint, set_module
from .models.registry import arch_for, block_linears, get_arch, get_blocks, model_type
from .nn import QuantLinear
from .outdir import atomic_output_dir, check_output_dir

log = logging.getLogger(__name__)


def is_skipped(name: str, patterns: list[str]) -> bool:
    """A layer is skipped if a pattern equals its full name or a dotted suffix of it."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def check_implemented(method: str) -> None:
    if method not in ALGORITHMS:
        raise LowbitError(
            f"quantization type '{method}' is not implemented in this version of lowbit; "
            f"available: {', '.join(sorted(ALGORITHMS))}"
        )


def check_source_supported(model_path: str | Path) -> None:
    """Refuse an unsupported architecture from config.json alone, before loading weights."""
    kind, where = resolve_source(model_path)
    if kind in ("folder", "demo"):
        arch_for(read_config(where).get("model_type", "unknown"))


def quantize_linear(name: str, linear: nn.Linear, cfg: QuantConfig, stats: object = None) -> tuple[QuantLinear, dict]:
    """One Linear -> (QuantLinear, report record)."""
    W = linear.weight.data
    if not torch.isfinite(W).all():
        raise LowbitError(f"layer {name} has NaN or Inf weights: the model is corrupt; re-export it")
    start = time.perf_counter()
    result = ALGORITHMS[cfg.method](W, stats, cfg)
    layer = QuantLinear.from_quantized(result.weight, cfg.group_size, linear.bias)
    W_hat = result.weight.dequantize()
    rel = ((W_hat - W.float()).norm() / W.float().norm().clamp_min(1e-12)).item()
    record = {"layer": name, "shape": list(W.shape), "loss": result.loss, "rel_weight_error": rel,
              "seconds": round(time.perf_counter() - start, 4)}
    return layer, record


def quantize_model(model: nn.Module, cfg: QuantConfig, progress: bool = True) -> list[dict]:
    """Quantize the Linear layers of every decoder block in place; returns per-layer records."""
    check_implemented(cfg.method)
    if cfg.method not in INT_GROUP_METHODS:
        raise LowbitError(f"quantization type '{cfg.method}' does not produce group-wise integer weights")
    arch = get_arch(model)
    blocks = get_blocks(model)
    records = []
    for i, block in enumerate(tqdm(blocks, desc=f"{cfg.method} w{cfg.bits} g{cfg.group_size}",
                                   unit="block", disable=not progress)):
        for name, linear in block_linears(block).items():
            full = f"{arch.blocks}.{i}.{name}"
            if is_skipped(full, cfg.modules_to_not_convert):
                continue
            layer, record = quantize_linear(full, linear, cfg)
            set_module(block, name, layer)
            records.append(record)
    if cfg.quantize_lm_head:
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear):
            layer, record = quantize_linear("lm_head", head, cfg)
            model.set_output_embeddings(layer)
            model.config.tie_word_embeddings = False
            records.append(record)
    return records


def quantize(
    model_path: str | Path,
    output_dir: str | Path,
    cfg: QuantConfig,
    calibration: CalibrationConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dtype: torch.dtype | None = None,
) -> dict:
    """Quantize the model at ``model_path`` and write a checkpoint to ``output_dir``.

    dtype: what the parts left in float (embeddings, norms, lm_head) are stored in; None
    keeps the source's. The math always runs in float32.
    Returns the report that is also written as lowbit_report.json.
    """
    check_output_dir(output_dir, overwrite)  # fail before the slow part
    check_implemented(cfg.method)
    check_source_supported(model_path)
    t0 = time.perf_counter()
    model, tokenizer = load_float(model_path)
    get_arch(model)
    t1 = time.perf_counter()
    if cfg.method in BNB_BITS:  # NF4/FP4/int8: Linear4bit / Linear8bitLt layers, no calibration
        from .models.onthefly import quantize_model_bnb

        records = quantize_model_bnb(model, cfg, progress=progress)
    else:
        records = quantize_model(model, cfg, progress=progress)
    t2 = time.perf_counter()
    report = {
        "lowbit_version": __version__,
        "source": str(model_path),
        "architecture": model_type(model),
        "quantization_config": cfg.to_dict(),
        "calibration": None if calibration is None else vars(calibration),
        "layers": records,
        "mean_rel_weight_error": sum(r["rel_weight_error"] for r in records) / max(len(records), 1),
        "seconds": {"load": round(t1 - t0, 2), "quantize": round(t2 - t1, 2)},
    }
    if dtype is not None:
        cast_float_parameters(model, dtype)
    with atomic_output_dir(output_dir, overwrite) as tmp:
        save_checkpoint(model, tokenizer, cfg, tmp)
        report["seconds"]["save"] = round(time.perf_counter() - t2, 2)
        report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
        report["bytes_on_disk"] = disk_bytes(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
