"""Reference kernels in plain torch: the ground truth every fast kernel is tested against.

They dequantize the whole weight, then call ``F.linear``. Correct on any device and dtype,
and slow: they move 16-bit weights, not 4-bit ones.
"""
from __future__ import annotations

import functools

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
    # (The check reads a flag back from the device, which CUDA-graph capture forbids; the
    # gather below gives the same numbers, so a capture takes it.)
    capturing = g_idx.is_cuda and torch.cuda.is_current_stream_capturing()
    if k % groups == 0 and not capturing and torch.equal(g_idx, _contiguous_g_idx(k, groups, g_idx.device)):
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


def silu_pairs(y: torch.Tensor) -> torch.Tensor:
    """[..., 2F] with gate and up of feature i at columns 2i, 2i + 1 -> silu(gate) * up
    [..., F], in float32, rounded once to y's dtype."""
    return (F.silu(y[..., 0::2].float()) * y[..., 1::2].float()).to(y.dtype)


def nf4_linear(
    x: torch.Tensor,
    weight_4bit: torch.Tensor,
    absmax: torch.Tensor,
    quant_type: str,
    blocksize: int,
    compute_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [..., N] in x.dtype = x @ W.T + bias, computed in ``compute_dtype``.

    weight_4bit: uint8 [N, K/2] NF4/FP4 codes (high nibble first); absmax: float32 [nb]
    (already un-double-quantized). See ``lowbit.nn.linear4bit`` for the layout.
    """
    from ..formats.nf4 import dequantize_4bit

    n, k = weight_4bit.shape[0], weight_4bit.shape[1] * 2
    w = dequantize_4bit(weight_4bit, absmax, quant_type, blocksize, (n, k), compute_dtype)
    y = F.linear(x.to(compute_dtype), w, None if bias is None else bias.to(compute_dtype))
    return y.to(x.dtype)


def int8_linear(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    threshold: float,
    compute_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    act_block_size: int = 0,
) -> torch.Tensor:
    """LLM.int8 (Dettmers et al. 2022): y [..., N] in x.dtype.

    weight_int8: int8 [N, K] row-wise codes; weight_scale: float32 [N] (row absmax / 127).
    Input columns j with max |x[:, j]| > threshold ("outliers") go through a matmul in
    ``compute_dtype`` with the matching (dequantized) weight columns; the rest is quantized
    to int8 and multiplied int8 x int8 with int32 accumulation. threshold <= 0 disables the
    decomposition (everything through int8).

    act_block_size 0: one activation scale per token (the paper's vector-wise quantization).
    act_block_size B > 0: one scale per token and block of B columns; each block's int8
    product is accumulated in int32 and rescaled by its token-block scale (the weight's scale
    is per row, the same in every block), then the blocks are summed in float32.
    """
    from ..formats.int8 import outlier_columns, quantize_rowwise, quantize_rowwise_blocks

    shape = x.shape
    xc = x.reshape(-1, shape[-1]).to(compute_dtype)  # [M, K]
    y = torch.zeros(xc.shape[0], weight_int8.shape[0], dtype=torch.float32, device=x.device)  # [M, N]
    outlier = outlier_columns(xc, threshold)  # [K]
    if outlier.any():
        cols = outlier.nonzero().flatten()
        w_out = weight_int8[:, cols].to(compute_dtype) * weight_scale[:, None].to(compute_dtype)  # [N, k_out]
        y += (xc[:, cols] @ w_out.t()).float()
        xc = xc.masked_fill(outlier[None, :], 0)
    if 0 < act_block_size < xc.shape[1]:
        xq, x_scale = quantize_rowwise_blocks(xc, act_block_size)  # int8 [M, K], float32 [M, nb]
        y += _int8_matmul_blockwise(xq, x_scale, weight_int8, act_block_size) * weight_scale[None, :].float()
    else:  # a block spanning all of K is the per-token scale
        xq, x_scale = quantize_rowwise(xc)  # int8 [M, K], float32 [M]
        acc = _int8_matmul(xq, weight_int8)  # int32 [M, N]
        y += acc.float() * x_scale[:, None] * weight_scale[None, :].float()
    if bias is not None:
        y += bias.float()
    return y.to(compute_dtype).to(x.dtype).reshape(*shape[:-1], weight_int8.shape[0])


#: Up to this many (token, block) rows, the blockwise product is one int8 matmul of a
#: block-diagonal expansion of the activations (decode: one call instead of K / block calls).
BLOCK_DIAGONAL_MAX_ROWS = 256


def _int8_matmul_blockwise(xq: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, block: int,
                           block_diagonal: bool | None = None) -> torch.Tensor:
    """float32 [M, N] = sum over column blocks b of x_scale[:, b] * (xq[:, b] @ w[:, b].T), each
    block's product accumulated exactly in int32 (xq int8 [M, K], x_scale float32 [M, nb],
    w int8 [N, K]).

    Few rows (M * nb <= BLOCK_DIAGONAL_MAX_ROWS, or block_diagonal=True): row (m, b) of an
    [M * nb, K] int8 matrix holds token m's block b and zeros elsewhere, so one int8 matmul
    gives every block's int32 sum (a matrix-vector product costs the weight read, not the
    rows). Otherwise one int8 matmul per block (a loop over K / block, not over elements)."""
    m, k = xq.shape
    nb = x_scale.shape[1]
    if block_diagonal is None:
        block_diagonal = m * nb <= BLOCK_DIAGONAL_MAX_ROWS
    if block_diagonal:
        a = xq[:, None, :] * _block_mask(k, block, xq.device)  # int8 [M, nb, K]: token m's block b, else 0
        acc = _int8_matmul(a.view(m * nb, k), w).view(m, nb, -1)  # int32 [M, nb, N]
        return torch.bmm(x_scale[:, None, :], acc.float()).squeeze(1)  # sum_b scale[m, b] * acc[m, b]
    y = torch.zeros(m, w.shape[0], dtype=torch.float32, device=xq.device)
    for b, start in enumerate(range(0, k, block)):
        acc = _int8_matmul(xq[:, start:start + block].contiguous(), w[:, start:start + block])  # int32 [M, N]
        y.addcmul_(acc.float(), x_scale[:, b:b + 1])
    return y


@functools.lru_cache(maxsize=64)
def _block_mask(k: int, block: int, device: torch.device) -> torch.Tensor:
    """int8 [ceil(k / block), k]: row b is 1 on the columns of block b, 0 elsewhere."""
    cols = torch.arange(k, device=device) // block
    return (cols[None, :] == torch.arange(-(-k // block), device=device)[:, None]).to(torch.int8)


def _int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 [M, N] = a int8 [M, K] @ b int8 [N, K].T, accumulated in int32."""
    try:
        return torch._int_mm(a, b.t())
    except RuntimeError:
        pass
    if a.device.type == "cpu":
        return (a.long() @ b.long().t()).to(torch.int32)  # exact: |sum| <= 127^2 * K
    # CUDA's _int_mm wants M > 16 and K, N multiples of 8: zero padding changes no sum.
    m, k = a.shape
    n = b.shape[0]
    mp, kp, np_ = max(32, -(-m // 8) * 8), -(-k // 8) * 8, -(-n // 8) * 8
    ap = torch.nn.functional.pad(a, (0, kp - k, 0, mp - m))
    bp = torch.nn.functional.pad(b, (0, kp - k, 0, np_ - n))
    return torch._int_mm(ap, bp.t())[:m, :n]
