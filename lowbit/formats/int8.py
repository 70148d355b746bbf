"""Row-wise (vector-wise) int8 for LLM.int8 (Dettmers et al. 2022).

Each row of a matrix gets one scale = absmax(row) / 127 and codes q = round(x * 127 / absmax)
in [-127, 127] (symmetric, no zero point; -128 unused). Weights are quantized per output
row once; activations per token (row) at run time, either with one scale a row (the
paper's vector-wise quantization) or one scale per row and block of ``block_size`` columns
(fine-grained scales as in FP8/INT8 training and inference recipes, e.g. DeepSeek-V3's 1 x 128
activation tiles), which rounds tokens whose magnitudes vary along K far less coarsely.
Columns whose magnitude exceeds a threshold ("outlier features") are kept out of the int8
product.

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


def quantize_rowwise_blocks(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 [M, K], scale float32 [M, ceil(K / block_size)]) with
    x[:, j] ~= q[:, j] * scale[:, j // block_size]; a ragged last block is allowed.

    Each (row, block) gets absmax / 127; an all-zero block gets scale 0 and codes 0.
    """
    m, k = x.shape
    nb = -(-k // block_size)
    xf = x.float()
    if nb * block_size != k:
        xf = torch.nn.functional.pad(xf, (0, nb * block_size - k))  # zeros change no absmax
    xb = xf.reshape(m, nb, block_size)
    absmax = xb.abs().amax(dim=2)  # [M, nb]
    inv = QMAX / absmax.clamp_min(1e-30)
    q = torch.round(xb * inv[:, :, None]).clamp_(-QMAX, QMAX).to(torch.int8).view(m, nb * block_size)
    return (q if nb * block_size == k else q[:, :k].contiguous()), absmax / QMAX


def dequantize_rowwise_blocks(q: torch.Tensor, scale: torch.Tensor, block_size: int,
                              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[M, K] in ``dtype`` = q * scale expanded over each block of columns (float32 math)."""
    s = scale.float().repeat_interleave(block_size, dim=1)[:, : q.shape[1]]
    return (q.float() * s).to(dtype)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [K]: columns of x [M, K] holding any |value| > threshold (none when threshold <= 0)."""
    if threshold <= 0:
        return torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    return (x.abs() > threshold).any(dim=0)


__all__ = ["QMAX", "dequantize_rowwise", "dequantize_rowwise_blocks", "outlier_columns", "quantize_rowwise",
           "quantize_rowwise_blocks"]
