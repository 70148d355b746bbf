"""Quantize a model: walk its decoder blocks (from the registry) and swap quantized layers in.

``quantize_model`` works on a model in memory; ``quantize`` goes from a model path to a
finished checkpoint folder. The int-group methods (RTN, GPTQ, AWQ) all go block by block
through ``lowbit.calibration.sequential`` (one block on the device at a time); what each
does with a block is in ``lowbit.calibration.blockwise``.
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .algorithms import ALGORITHMS
from .calibration import data as calibration_data
from .calibration import sequential
from .calibration.blockwise import BLOCK_STEPS, CALIBRATED, BlockContext, is_skipped, quantize_linear  # noqa: F401
from .config import BNB_BITS, INT_GROUP_METHODS, CalibrationConfig, QuantConfig
from .errors import LowbitError
from .models import load_float, resolve_source
from .models.checkpoint import REPORT_FILE, cast_float_parameters, disk_bytes, read_config
from .models.registry import arch_for, get_arch, model_type
from .outdir import atomic_output_dir, check_output_dir

log = logging.getLogger(__name__)


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


def calibration_ids(cfg: QuantConfig, calibration, tokenizer) -> torch.Tensor | None:
    """Token ids [N, L] for a calibrated method (None for RTN). calibration: a LongTensor
    [N, L], a CalibrationConfig (read with ``tokenizer``) or None (the defaults)."""
    if cfg.method not in CALIBRATED:
        return None
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.int64, torch.int32) or calibration.numel() == 0:
            raise LowbitError(f"calibration token ids must be a LongTensor [samples, length], got "
                              f"{calibration.dtype} {tuple(calibration.shape)}")
        return calibration.long()
    return calibration_data.load(tokenizer, calibration or CalibrationConfig())


def quantize_model(
    model: nn.Module,
    cfg: QuantConfig,
    progress: bool = True,
    calibration: "CalibrationConfig | torch.Tensor | None" = None,
    tokenizer=None,
    device: "str | torch.device | None" = None,
    compute_dtype="auto",
    batch_size: int | None = None,
) -> list[dict]:
    """Quantize the Linear layers of every decoder block in place, one block at a time on
    ``device`` (default: cuda if available); returns per-layer records.

    calibration (GPTQ, AWQ): token ids LongTensor [N, L] or a CalibrationConfig, read with
    ``tokenizer`` (default ``model.tokenizer``). compute_dtype: of the calibration forward
    passes ("auto": see ``sequential.resolve_compute_dtype``). batch_size: sequences per
    forward pass (default: about 8k tokens on CPU, 16k on GPU).
    """
    check_implemented(cfg.method)
    if cfg.method not in INT_GROUP_METHODS:
        raise LowbitError(f"quantization type '{cfg.method}' does not produce group-wise integer weights")
    arch = get_arch(model)
    ids = calibration_ids(cfg, calibration, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None))
    step = partial(BLOCK_STEPS[cfg.method], BlockContext(cfg, arch))
    records = sequential.run(model, ids, step, device=device, compute_dtype=compute_dtype, batch_size=batch_size,
                             progress=progress, desc=f"{cfg.method} w{cfg.bits} g{cfg.group_size}")
    if cfg.quantize_lm_head:
        head = model.get_output_embeddings()
        if isinstance(head, nn.Linear):
            # Rounded to nearest for every method: the head's inputs are not captured.
            layer, record = quantize_linear("lm_head", head, cfg, algorithm=ALGORITHMS["rtn"])
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
    device: "str | torch.device | None" = None,
) -> dict:
    """Quantize the model at ``model_path`` and write a checkpoint to ``output_dir``.

    dtype: what the parts left in float (embeddings, norms, lm_head) are stored in; None
    keeps the source's. The math always runs in float32.
    device: where the int-group methods work on each block (default: cuda if available).
    Returns the report that is also written as lowbit_report.json.
    """
    check_output_dir(output_dir, overwrite)  # fail before the slow part
    check_implemented(cfg.method)
    check_source_supported(model_path)
    if cfg.method in INT_GROUP_METHODS:
        sequential.resolve_device(device)
    t0 = time.perf_counter()
    model, tokenizer = load_float(model_path)
    get_arch(model)
    t1 = time.perf_counter()
    if cfg.method in BNB_BITS:  # NF4/FP4/int8: Linear4bit / Linear8bitLt layers, no calibration
        from .models.onthefly import quantize_model_bnb

        records = quantize_model_bnb(model, cfg, progress=progress)
    else:
        records = quantize_model(model, cfg, progress=progress, calibration=calibration, tokenizer=tokenizer,
                                 device=device)
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
        from .export import save as save_as  # dispatches on cfg.format: lowbit, gptq, awq, compressed-tensors

        save_as(model, tokenizer, cfg, tmp)
        report["seconds"]["save"] = round(time.perf_counter() - t2, 2)
        report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
        report["bytes_on_disk"] = disk_bytes(tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report
