"""Round-to-nearest: no calibration data, each weight rounded to its nearest code."""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..formats import AffineQuantized, choose_qparams_clipped, group_block, group_index, quantize, quantize_affine
from .result import LayerResult


def rtn_quantize(W: torch.Tensor, stats: object, cfg: QuantConfig) -> LayerResult:
    """W: float [N, K]. ``stats`` is unused (RTN sees no data)."""
    block = group_block(W.shape[1], cfg.group_size)
    if cfg.clip_search:
        scale, zero = choose_qparams_clipped(W, cfg.bits, block, cfg.sym)
        g_idx = group_index(W.shape[1], block[1], device=W.device)
        qw = AffineQuantized(quantize(W, scale, zero, cfg.bits, g_idx), scale, zero, g_idx, cfg.bits, block, cfg.sym)
    else:
        qw = quantize_affine(W, cfg.bits, block, sym=cfg.sym)
    loss = (qw.dequantize() - W.float()).pow(2).mean().item()
    return LayerResult(qw, loss)
