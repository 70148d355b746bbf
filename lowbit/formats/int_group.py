"""Uniform (affine) integer quantization: one primitive for every granularity.

A weight ``w`` of shape [N, K] (out_features, in_features, as ``nn.Linear`` holds it) is
represented by unsigned integer codes ``q`` in [0, 2**bits - 1], a ``scale`` and a ``zero``
point per block, with

    w_hat = scale * (q - zero)

Granularity is the ``block_size`` argument, a (rows, cols) pair, as in torchao's
``quantize_affine``:

    ==============  ==============  =====================
    granularity     block_size      scale / zero shape
    ==============  ==============  =====================
    per-tensor      (N, K)          [1, 1]
    per-channel     (1, K)          [N, 1]
    per-group G     (1, G)          [N, ceil(K / G)]
    ==============  ==============  =====================

Group sizes that do not divide K are allowed: the last group is ragged (shorter). The
demo model's hidden size 576 with group 128 gives four groups of 128 and one of 64. This
is what GPTQ's ``g_idx = k // group_size`` describes, so the GPTQ checkpoint layout holds it
without any special case.

Symmetric quantization uses the GPTQ / compressed-tensors convention: the zero point is the
middle code ``2**(bits-1)`` and ``scale = absmax / ((2**bits - 1) / 2)``, so an exact zero
maps to the code ``2**(bits-1)`` and dequantizes to exactly zero. Asymmetric quantization
widens [min, max] to contain 0 (so zero stays exactly representable) and rounds the zero
point to an integer code.

Rounding error is at most ``scale / 2`` per element (see tests/formats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def group_block(in_features: int, group_size: int) -> tuple[int, int]:
    """block_size for ``group_size`` (-1 = per-channel) over ``in_features`` columns."""
    if group_size == -1:
        return (1, in_features)
    if group_size <= 0:
        raise ValueError(f"group_size must be a positive integer or -1 (per-channel), got {group_size}")
    return (1, group_size)


def num_groups(in_features: int, group_size: int) -> int:
    """Number of column groups, counting a ragged last group."""
    cols = group_block(in_features, group_size)[1]
    return -(-in_features // cols)


def group_index(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """g_idx: int32 [K], the group of each input column (``k // group_size``)."""
    cols = group_block(in_features, group_size)[1]
    return (torch.arange(in_features, device=device) // cols).to(torch.int32)


def _block_view(w: torch.Tensor, block_size: tuple[int, int], pad_value: float) -> torch.Tensor:
    """[N, K] -> [N / rows, rows, G, cols], padding a ragged last column group."""
    n, k = w.shape
    rows, cols = block_size
    if rows <= 0 or cols <= 0 or n % rows:
        raise ValueError(f"block_size {block_size} does not tile a weight of shape {tuple(w.shape)}")
    groups = -(-k // cols)
    pad = groups * cols - k
    if pad:
        w = torch.nn.functional.pad(w, (0, pad), value=pad_value)
    return w.reshape(n // rows, rows, groups, cols)


def round_scale_up(scale: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Round float32 scales to the storage ``dtype``, never downwards.

    Rounding up keeps every weight inside the code range, so the error bound scale/2 holds
    exactly for the stored scale.
    """
    if dtype is None or dtype == torch.float32:
        return scale
    stored = scale.to(dtype)
    up = torch.nextafter(stored, torch.full_like(stored, float("inf")))
    return torch.where(stored.float() < scale, up, stored).float()


def choose_qparams(
    w: torch.Tensor,
    bits: int,
    block_size: tuple[int, int],
    sym: bool,
    scale_dtype: torch.dtype | None = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each block of ``w``.

    w: float [N, K]. Returns (scale, zero), both float32 [N / rows, G]; ``zero`` holds integer
    values in [0, 2**bits - 1]. ``scale_dtype`` is the dtype the scales will be stored in:
    they are rounded to it here, before the zero point and the codes are chosen, so that a
    checkpoint dequantizes to exactly what was measured.
    """
    check_bits(bits)
    return _range_qparams(*_block_range(w.float(), block_size), bits, sym, scale_dtype)


def _block_range(w: torch.Tensor, block_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) float32 [N / rows, G] of each block, widened to contain 0 so that an exact
    zero weight (padding, pruned) stays exact."""
    wmin = _block_view(w, block_size, float("inf")).amin(dim=(1, 3)).clamp(max=0)
    wmax = _block_view(w, block_size, float("-inf")).amax(dim=(1, 3)).clamp(min=0)
    return wmin, wmax


def _range_qparams(wmin: torch.Tensor, wmax: torch.Tensor, bits: int, sym: bool,
                   scale_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) [N / rows, G] of ranges wmin <= 0 <= wmax."""
    maxq = 2**bits - 1
    if sym:
        scale = torch.maximum(-wmin, wmax) / (maxq / 2)
    else:
        scale = (wmax - wmin) / maxq
    # An all-zero block would divide by zero; any scale represents it exactly.
    scale = round_scale_up(torch.where(scale > 0, scale, torch.ones_like(scale)), scale_dtype)
    if sym:
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    return scale, torch.clamp(torch.round(-wmin / scale), 0, maxq)


def choose_qparams_clipped(
    w: torch.Tensor,
    bits: int,
    block_size: tuple[int, int],
    sym: bool,
    scale_dtype: torch.dtype | None = torch.float16,
    col_weight: torch.Tensor | None = None,
    grid: int = 20,
    max_shrink: float = 0.2,
    norm: float = 2.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``choose_qparams`` with the range shrunk per block by the factor in
    ``1, 1 - max_shrink / grid, ..., 1 - max_shrink`` that minimizes
    sum col_weight[k] * |w - w_hat|^norm over the block (GPTQ's reference "mse" quantizer;
    norm 2.4 as there). Clipping a few large weights buys a finer step for all the others.

    w: float [N, K]; col_weight: float [K] or None (uniform), e.g. diag(H) so that the
    columns the layer's inputs use most count most. Returns (scale, zero) float32 [N / rows, G].
    The unshrunk range (factor 1) is a candidate, so no block gets a worse error than plain
    min-max under this measure.
    """
    check_bits(bits)
    w = w.float()
    maxq = 2**bits - 1
    view = _block_view(w, block_size, 0.0)  # [B, rows, G, cols]; padding is exact at any scale
    cw = None
    if col_weight is not None:
        cw = _block_view(col_weight.float().reshape(1, -1).expand(block_size[0], -1).contiguous(), block_size, 0.0)
        cw = cw.reshape(1, block_size[0], cw.shape[2], cw.shape[3])
    best_err = best_scale = best_zero = None
    wmin, wmax = _block_range(w, block_size)
    for i in range(grid + 1):
        p = 1 - max_shrink * i / grid
        scale, zero = _range_qparams(wmin * p, wmax * p, bits, sym, scale_dtype)
        s, z = scale[:, None, :, None], zero[:, None, :, None]
        err = (view - (torch.clamp(torch.round(view / s) + z, 0, maxq) - z) * s).abs_().pow_(norm)
        if cw is not None:
            err = err * cw
        err = err.sum(dim=(1, 3))  # [B, G]
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def expand(t: torch.Tensor, g_idx: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-block values [N / rows, G] -> per-element [N, K], through g_idx int [K]."""
    t = t[:, g_idx.long()]
    return t.repeat_interleave(rows, dim=0) if rows > 1 else t


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, g_idx: torch.Tensor, rows: int = 1
) -> torch.Tensor:
    """Codes uint8 [N, K] of float w [N, K] given per-block scale/zero [N / rows, G]."""
    check_bits(bits)
    s = expand(scale.float(), g_idx, rows)
    z = expand(zero.float(), g_idx, rows)
    q = torch.clamp(torch.round(w.float() / s) + z, 0, 2**bits - 1)
    return q.to(torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    g_idx: torch.Tensor,
    rows: int = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """float [N, K] = scale * (q - zero), for codes q [N, K] and scale/zero [N / rows, G]."""
    s = expand(scale.to(dtype), g_idx, rows)
    z = expand(zero.to(dtype), g_idx, rows)
    return (q.to(dtype) - z) * s


@dataclass
class AffineQuantized:
    """Codes and parameters of an affinely quantized [N, K] weight.

    q: uint8 [N, K]; scale, zero: float32 [N / rows, G]; g_idx: int32 [K].
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    block_size: tuple[int, int]
    sym: bool

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero, self.g_idx, self.block_size[0], dtype)


def quantize_affine(
    w: torch.Tensor,
    bits: int,
    block_size: tuple[int, int] | None = None,
    sym: bool = True,
    scale_dtype: torch.dtype | None = torch.float16,
    clip: bool = False,
) -> AffineQuantized:
    """Round-to-nearest quantization of float w [N, K] (default block: per-channel).

    ``scale_dtype``: the dtype scales are stored in (see ``choose_qparams``); ``clip``: block
    ranges from ``choose_qparams_clipped`` instead of min-max.
    """
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight [out_features, in_features], got shape {tuple(w.shape)}")
    n, k = w.shape
    block_size = block_size or (1, k)
    scale, zero = (choose_qparams_clipped if clip else choose_qparams)(w, bits, block_size, sym, scale_dtype)
    g_idx = group_index(k, block_size[1], device=w.device)
    q = quantize(w, scale, zero, bits, g_idx, block_size[0])
    return AffineQuantized(q, scale, zero, g_idx, bits, tuple(block_size), sym)
