"""bitsandbytes-style quantization without calibration: NF4/FP4 blockwise (QLoRA) and
row-wise int8 (LLM.int8). Pure functions ``(W [N, K], stats, cfg) -> LayerResult``; the
outlier decomposition of LLM.int8 happens at run time (``kernels.reference.int8_linear``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import QuantConfig
from ..formats import int8, nf4
from .result import LayerResult


@dataclass
class RowwiseInt8:
    """q int8 [N, K], scale float32 [N]: W ~= q * scale[:, None]."""

    q: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return int8.dequantize_rowwise(self.q, self.scale, dtype)


def fourbit_quantize(W: torch.Tensor, stats: object, cfg: QuantConfig) -> LayerResult:
    """W float [N, K] -> LayerResult(weight=formats.nf4.Quantized4bit, loss=MSE).

    cfg.method "nf4" | "fp4"; cfg.blocksize; cfg.double_quant. ``stats`` is unused.
    """
    q = nf4.quantize_4bit(W, cfg.method, cfg.blocksize, cfg.double_quant)
    loss = (q.dequantize() - W.float()).pow(2).mean().item()
    return LayerResult(q, loss)


def int8_quantize(W: torch.Tensor, stats: object, cfg: QuantConfig) -> LayerResult:
    """W float [N, K] -> LayerResult(weight=RowwiseInt8, loss=MSE). ``stats`` is unused."""
    q, scale = int8.quantize_rowwise(W)
    w8 = RowwiseInt8(q, scale)
    loss = (w8.dequantize() - W.float()).pow(2).mean().item()
    return LayerResult(w8, loss)


#: Methods whose layers are Linear4bit / Linear8bitLt rather than QuantLinear.
BNB_ALGORITHMS = {"nf4": fourbit_quantize, "fp4": fourbit_quantize, "int8": int8_quantize}

__all__ = ["BNB_ALGORITHMS", "RowwiseInt8", "fourbit_quantize", "int8_quantize"]
