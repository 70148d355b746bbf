"""Dequantize a packed weight to a 16-bit matrix, for large M (prefill): there the matmul is
compute-bound, cuBLAS's tiles beat the fused kernel's, and one pass writing W costs less
than the fused kernel's per-tile decoding. Output is W^T in kernel order, [K, N]; the
caller permutes x's columns for act-order and calls cuBLAS.

Grid: (column blocks, chunks); a program decodes one chunk of one column block.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import decode_slab, int_value, zero_term


@triton.jit
def dequant_kernel(
    qw_ptr, s_ptr, z_ptr, lut_ptr, w_ptr, N, K, KC, G, magic,
    BITS: tl.constexpr, BN: tl.constexpr, PK: tl.constexpr, GS: tl.constexpr,
    MODE_LUT: tl.constexpr, HAS_ZERO: tl.constexpr,
):
    pid_n = tl.program_id(0)
    c = tl.program_id(1)
    CPW: tl.constexpr = 32 // BITS
    KCH: tl.constexpr = CPW * PK
    rr = tl.arange(0, PK)[:, None]
    rn = pid_n * BN + tl.arange(0, BN)[None, :]
    nmask = rn < N
    words = tl.load(qw_ptr + (pid_n.to(tl.int64) * KC + c) * (PK * BN) + rr * BN + tl.arange(0, BN)[None, :])
    hi = (words.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)
    for j in tl.static_range(CPW):
        kk = c * KCH + j * PK + rr  # [PK, 1]
        g = tl.minimum((c * KCH + j * PK) // GS, G - 1)
        s = tl.load(s_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)  # [1, BN]
        v = decode_slab(words, hi, magic, lut_ptr, j, BITS, MODE_LUT)
        if MODE_LUT:
            w = v * s
        else:
            if HAS_ZERO:
                z = tl.load(z_ptr + g * N + rn, mask=nmask, other=0.0).to(tl.float32)
            else:
                z = tl.full([1, BN], 1 << (BITS - 1), tl.float32)
            w = int_value(v, zero_term(z, j, BITS), j, BITS) * s
        tl.store(w_ptr + kk.to(tl.int64) * N + rn, w.to(w_ptr.dtype.element_ty), mask=(kk < K) & nmask)
