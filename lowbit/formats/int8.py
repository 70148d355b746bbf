"""Row-wise (vector-wise) int8 for LLM.int8 (Dettmers et al. 2022).

Each row of a matrix gets one scale = absmax(row) / 127 and codes q = round(x * 127 / absmax)
in [-127, 127] (symmetric, no zero point; -128 unused). Weights are quantized per output
row once; activations per token (row) at run time. Columns whose magnitude exceeds a
threshold ("outlier features") are kept out of the int8 product.

Imports nothing of lowbit.
"""
from __future__ import annotations

import torch

QMAX = 127


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [M, K], scale float32 [M]) with x ~= q * scale[:, None].

    An all-zero row gets scale 0 and codes 0.
    """
    xf = x.float()
    absmax = xf.abs().amax(dim=1)  # [M]
    inv = QMAX / absmax.clamp_min(1e-30)
    q = torch.round(xf * inv[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, absmax / QMAX


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[M, K] in ``dtype`` = q * scale[:, None] (formed in float32)."""
    return (q.float() * scale.float()[:, None]).to(dtype)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [K]: columns of x [M, K] holding any |value| > threshold (none when threshold <= 0)."""
    if threshold <= 0:
        return torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    return (x.abs() > threshold).any(dim=0)


__all__ = ["QMAX", "dequantize_rowwise", "outlier_columns", "quantize_rowwise"]
