"""Fused dequantize-matmul on tensor cores, for M >= 2 (a few decode rows up to prefill).

Each step decodes one chunk of packed words, [PK, BNT] int32, into CPW slabs of [PK, BNT]
weights (consecutive kernel-order columns, see ``layout``), scales them into the
activation dtype and feeds each slab to ``tl.dot`` against the matching [BM, PK] slice of
x, accumulating in float32. The weight is read once per row block of BM rows, so small M
stays a stream over the weight (like the GEMV) while large M becomes a normal tiled GEMM.

SWAP computes the transposed product (W x^T): the weight slab becomes the left operand,
whose row count (BNT) is what the Hopper warp-group MMA wants to be >= 64, while a few
activation rows fill the narrow right operand.

Grid: (row blocks x column blocks, grouped for L2 reuse; K splits).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import decode_slab, grouped_tile, int_value, load_x_tile, store_output, zero_term


@triton.jit
def int_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, perm_ptr, lut_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KC, G, stride_xm, stride_ym, chunks_per_split, splits, magic,
    BITS: tl.constexpr, BN: tl.constexpr, PK: tl.constexpr, GS: tl.constexpr, JR: tl.constexpr, EVEN_K: tl.constexpr,
    BM: tl.constexpr, BNT: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, SWAP: tl.constexpr,
    MODE_LUT: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n, num_n = grouped_tile(pid, M, N, BM, BNT, GROUP_M)
    CPW: tl.constexpr = 32 // BITS
    KCH: tl.constexpr = CPW * PK
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BNT + tl.arange(0, BNT)
    rr = tl.arange(0, PK)
    nmask = rn < N
    mmask = rm < M
    w_col = (rn // BN).to(tl.int64) * (KC * PK * BN) + rn % BN  # [BNT]
    x_rows = x_ptr + rm.to(tl.int64) * stride_xm  # [BM]
    c_begin = pid_k * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, KC)
    if SWAP:
        acc = tl.zeros([BNT, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BNT], dtype=tl.float32)
    for c in range(c_begin, c_end):
        words = tl.load(qw_ptr + w_col[None, :] + (c * PK + rr[:, None]) * BN, mask=nmask[None, :], other=0)
        hi = (words.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)  # logical: one SHF
        for j in tl.static_range(CPW):
            if j % JR == 0:  # first slab of a group: its scale (and zero), [BNT]
                # Padding chunks past the last group reuse its scale: their codes are 0 and
                # their activations are masked to 0, so any finite scale gives 0.
                g = tl.minimum((c * KCH + j * PK) // GS, G - 1)
                s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
                if HAS_ZERO:
                    z = tl.load(z_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
                else:
                    z = tl.full([BNT], 1 << (BITS - 1), tl.float32)  # symmetric: the middle code
            v = decode_slab(words, hi, magic, lut_ptr, j, BITS, MODE_LUT)  # float32 [PK, BNT]
            if MODE_LUT:
                w = v * s[None, :]
            else:
                w = int_value(v, zero_term(z, j, BITS)[None, :], j, BITS) * s[None, :]
            w = w.to(x_ptr.dtype.element_ty)
            kk = c * KCH + j * PK + rr  # [PK]
            if EVEN_K:
                kmask = rr < PK  # all true: K needs no mask
            else:
                kmask = kk < K
            xt = load_x_tile(x_rows, perm_ptr, kk, kmask, mmask, HAS_PERM, SWAP)
            if SWAP:
                acc = tl.dot(tl.trans(w), xt, acc)  # [BNT, BM]
            else:
                acc = tl.dot(xt, w, acc)  # [BM, BNT]
    if SWAP:
        acc = tl.trans(acc)
    store_output(acc, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr,
                 pid_m * num_n + pid_n, splits, SPLIT_K, HAS_BIAS)
