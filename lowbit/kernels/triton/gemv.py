"""Fused dequantize-GEMV for one activation row at a time (decode, M = 1), on CUDA cores.

At M = 1 the matmul is a stream over the weight: the job is to read the packed words at
full memory bandwidth and spend as few instructions per weight as possible, because at
4 bits an H100 SM can issue only ~5 instructions per weight before issue, not memory, is
the limit. Per weight: one LOP3 (decode, no int->float conversion), one FMA (q - zero,
exact), one FMA with the activation; the scale is applied once per word and group, the
activation load once per row and code, the zero term once per column and code (so both
are shared by the rows / columns one thread holds: wide column blocks help).

Grid: (column blocks, K splits, rows). Program (pid_n, pid_k, m) reads column block pid_n
(one contiguous stream in the packed layout) over its share of the chunks and accumulates
y[m, block] in float32; split-K partial sums meet in ``store_output``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import decode_slab, int_value, store_output, zero_term
from .pdl import release, wait


@triton.jit
def int_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, perm_ptr, lut_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KC, G, stride_xm, stride_ym, chunks_per_split, splits, magic,
    BITS: tl.constexpr, BN: tl.constexpr, PK: tl.constexpr, C: tl.constexpr,
    GS: tl.constexpr, JR: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, EVEN_C: tl.constexpr,
    PREFETCH: tl.constexpr, LUT_REG: tl.constexpr,
    MODE_LUT: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    PDL: tl.constexpr,
):
    release(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    CPW: tl.constexpr = 32 // BITS
    KCH: tl.constexpr = CPW * PK
    rc = tl.arange(0, C)[:, None, None]  # chunk within the step
    rr = tl.arange(0, PK)[None, :, None]  # word row within a chunk
    rn = tl.arange(0, BN)[None, None, :]  # column within the block
    n = pid_n * BN + rn
    nmask = n < N
    c_begin = pid_k * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, KC)
    w_ptrs = qw_ptr + pid_n.to(tl.int64) * KC * (PK * BN) + (c_begin + rc) * (PK * BN) + rr * BN + rn
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    acc = tl.zeros([C, PK, BN], dtype=tl.float32)
    if MODE_LUT and LUT_REG:
        lut = tl.load(lut_ptr + tl.arange(0, 1 << BITS))  # the code book, held by the program
    if PREFETCH:
        nxt = tl.load(w_ptrs, mask=(c_begin + rc) < c_end, other=0)
    wait(PDL)  # x comes from the kernel ahead (``pdl``); only weights were read so far
    for c0 in range(c_begin, c_end, C):
        cidx = c0 + rc  # [C, 1, 1]
        cmask = cidx < c_end
        if PREFETCH:
            # Issue the next step's loads before this step's arithmetic: one program then
            # keeps two steps of weights in flight instead of waiting out each load.
            words = nxt
            w_ptrs += C * PK * BN
            nxt = tl.load(w_ptrs, mask=(cidx + C) < c_end, other=0)
        else:
            if EVEN_C:
                words = tl.load(w_ptrs)  # int32 [C, PK, BN]
            else:
                words = tl.load(w_ptrs, mask=cmask, other=0)
            w_ptrs += C * PK * BN
        hi = (words.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)  # logical: one SHF
        kk0 = cidx * KCH + rr  # kernel-order column of code 0, [C, PK, 1]
        for j in tl.static_range(CPW):
            kk = kk0 + j * PK
            if HAS_PERM:
                if EVEN_K and EVEN_C:
                    xi = tl.load(perm_ptr + kk)
                else:
                    xi = tl.load(perm_ptr + kk, mask=(kk < K) & cmask, other=0)
            else:
                xi = kk
            if EVEN_K and EVEN_C:
                xv = tl.load(x_row + xi).to(tl.float32)  # [C, PK, 1]
            else:
                xv = tl.load(x_row + xi, mask=(kk < K) & cmask, other=0.0).to(tl.float32)
            if j % JR == 0:  # first slab of a group: its scale (and zero), [C, 1, BN]
                g = tl.minimum((cidx * KCH + j * PK) // GS, G - 1)  # padding: see gemm
                s = tl.load(s_ptr + g * N + n, mask=nmask & cmask, other=0.0).to(tl.float32)
                if HAS_ZERO:
                    z = tl.load(z_ptr + g * N + n, mask=nmask & cmask, other=0.0).to(tl.float32)
                part = tl.zeros([C, PK, BN], dtype=tl.float32)
            if MODE_LUT and LUT_REG:
                # Look the codes up in the program's copy (a gather from registers / shared
                # memory) instead of one global load per weight.
                src = words if j < 16 // BITS else hi
                q = (src >> (BITS * (j % (16 // BITS)))) & ((1 << BITS) - 1)
                v = tl.reshape(tl.gather(lut, tl.reshape(q, [C * PK * BN]), 0), [C, PK, BN])
            else:
                v = decode_slab(words, hi, magic, lut_ptr, j, BITS, MODE_LUT)
            if MODE_LUT:
                part += v * xv
            else:
                if HAS_ZERO:
                    zt = zero_term(z, j, BITS)  # per column: amortized over the rows a thread holds
                else:
                    zt = zero_term(1 << (BITS - 1), j, BITS)
                part += int_value(v, zt, j, BITS) * xv
            if (j + 1) % JR == 0:
                acc += part * s
    total = tl.sum(tl.sum(acc, axis=1), axis=0)  # [BN]
    rm = m + tl.arange(0, 1)
    cols = pid_n * BN + tl.arange(0, BN)
    store_output(total[None, :], rm, cols, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr,
                 m * tl.num_programs(0) + pid_n, splits, SPLIT_K, HAS_BIAS)
