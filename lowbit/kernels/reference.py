"""Reference kernels in plain torch: the ground truth every fast kernel is tested against.

They dequantize the whole weight, then call ``F.linear``. Correct on any device and dtype,
and slow: they move 16-bit weights, not 4-bit ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats.packing import unpack


def dequantize_int_group(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Weight [N, K] in ``dtype`` from lowbit's packed int layout.

    qweight: int32 [ceil(K*bits/32), N], codes packed along K (the input dim).
    qzeros:  int32 [G, ceil(N*bits/32)], zero points packed along N (the output dim).
    scales:  float [G, N].
    g_idx:   int32 [K], group of each input column.
    """
    k = g_idx.shape[0]
    n = scales.shape[1]
    q = unpack(qweight, bits, k, dim=0)  # [K, N]
    z = unpack(qzeros, bits, n, dim=1)  # [G, N]
    groups = scales.shape[0]
    # (q - z) * s exactly as formats.dequantize computes it, so both agree bit for bit.
    if k % groups == 0 and torch.equal(g_idx, _contiguous_g_idx(k, groups, g_idx.device)):
        # Plain consecutive groups: broadcast instead of gathering [K, N] scales and zeros.
        w = (q.to(dtype).view(groups, k // groups, n) - z.to(dtype)[:, None]) * scales.to(dtype)[:, None]
        return w.view(k, n).t()
    g = g_idx.long()
    w = (q.to(dtype) - z.to(dtype).index_select(0, g)) * scales.to(dtype).index_select(0, g)  # [K, N]
    return w.t()


def _contiguous_g_idx(k: int, groups: int, device) -> torch.Tensor:
    return torch.arange(k, device=device, dtype=torch.int32) // (k // groups)


def int_group_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dequantized W.T + bias, computed in x.dtype."""
    w = dequantize_int_group(qweight, qzeros, scales, g_idx, bits, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
