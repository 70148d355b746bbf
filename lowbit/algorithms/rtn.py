"""Round-to-nearest: no calibration data, each weight rounded to its nearest code."""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..formats import group_block, quantize_affine
from .result import LayerResult


def rtn_quantize(W: torch.Tensor, stats: object, cfg: QuantConfig) -> LayerResult:
    """W: float [N, K]. ``stats`` is unused (RTN sees no data)."""
    qw = quantize_affine(W, cfg.bits, group_block(W.shape[1], cfg.group_size), sym=cfg.sym, clip=cfg.clip_search)
    loss = (qw.dequantize() - W.float()).pow(2).mean().item()
    return LayerResult(qw, loss)
