"""Checkpoint formats other tools read and write: GPTQ, AWQ (GEMM) and compressed-tensors.

One file per format, each with ``write(model, tokenizer, cfg, out, ...)`` (a model holding
QuantLinear layers -> a folder that vLLM / transformers load) and ``read(folder, config, dtype)``
(a folder -> a model with QuantLinear layers on lowbit's kernels). A new format is one file plus
one entry in ``WRITERS`` and ``READERS``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from ..config import QuantConfig
from ..errors import LowbitError
from . import awq, compressed_tensors, gptq

#: Every checkpoint layout ``--format`` names; "lowbit" is lowbit's own (any quantization type).
FORMATS = ("lowbit", "gptq", "awq", "compressed-tensors")

#: The format a quantization method writes unless told otherwise.
DEFAULT_FORMAT = {"rtn": "gptq", "gptq": "gptq", "awq": "awq", "nf4": "lowbit", "fp4": "lowbit", "int8": "lowbit"}

#: Writers by format: (model, tokenizer, cfg, out folder, **options) -> quantization_config written.
WRITERS: dict[str, Callable[..., dict]] = {
    "gptq": gptq.write,
    "awq": awq.write,
    "compressed-tensors": compressed_tensors.write,
}

#: Readers by config.json ``quantization_config.quant_method``: (folder, config dict, dtype) -> model.
READERS: dict[str, Callable[..., nn.Module]] = {
    "gptq": gptq.read,
    "awq": awq.read,
    "compressed-tensors": compressed_tensors.read,
}


#: Side files older GPTQ (AutoGPTQ) and AWQ (AutoAWQ) checkpoints keep their settings in, when
#: config.json has no quantization_config, with the quant_method each implies.
LEGACY_CONFIG_FILES = {"quantize_config.json": "gptq", "quant_config.json": "awq"}


def with_legacy_quantization_config(folder: str | Path, config: dict) -> dict:
    """config.json's dict, given a ``quantization_config`` from a legacy side file if it has none."""
    import json

    if "quantization_config" in config:
        return config
    for name, method in LEGACY_CONFIG_FILES.items():
        path = Path(folder) / name
        if path.is_file():
            try:
                qc = json.loads(path.read_text())
            except ValueError as e:
                raise LowbitError(f"{path} is not valid JSON ({e}): the checkpoint is corrupt") from None
            if isinstance(qc, dict):
                return {**config, "quantization_config": {"quant_method": method, **qc}}
    return config


def default_format(method: str) -> str:
    return DEFAULT_FORMAT.get(method, "lowbit")


def check_format(fmt: str, method: str | None = None) -> None:
    """Refuse an unknown format, or one that cannot hold ``method``'s weights."""
    if fmt not in FORMATS:
        raise LowbitError(f"unknown checkpoint format '{fmt}': choose one of {', '.join(FORMATS)}")
    if method is not None and fmt != "lowbit" and default_format(method) == "lowbit":
        raise LowbitError(f"--format {fmt} holds group-wise integer weights (rtn, gptq, awq); {method} "
                          "checkpoints are written with --format lowbit")


def save(model: nn.Module, tokenizer, cfg: QuantConfig, out: Path, report: dict | None = None, **options) -> None:
    """Write ``model`` into the folder ``out`` in ``cfg.format`` (lowbit's own layout by default)."""
    from ..models.checkpoint import save_checkpoint

    fmt = cfg.format or "lowbit"
    check_format(fmt)
    if fmt == "lowbit":
        save_checkpoint(model, tokenizer, cfg, Path(out), report)
        return
    WRITERS[fmt](model, tokenizer, cfg, Path(out), **options)
    if report is not None:
        import json

        from ..models.checkpoint import REPORT_FILE

        (Path(out) / REPORT_FILE).write_text(json.dumps(report, indent=2))


__all__ = ["DEFAULT_FORMAT", "FORMATS", "READERS", "WRITERS", "check_format", "default_format", "save"]
