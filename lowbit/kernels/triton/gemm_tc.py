"""Tiled tensor-core dequantize-GEMM: one ``tl.dot`` per K-step of BK columns, pipelined.

The older ``gemm.py`` feeds the tensor cores one 32-deep slab at a time from inside an
unrolled loop; here a whole K-step is one operand. A step t covers kernel-order columns
[t*BK, (t+1)*BK): codes h*JS .. h*JS+JS-1 (JS = BK / PK) of the words of chunk t // S
(S = steps per chunk). Because code j of word row r is column j*PK + r of its chunk (see
``layout``), decoding those JS codes of a [PK, BNT] word tile and reshaping [JS, PK, BNT]
-> [BK, BNT] gives the weight tile in column order, with no shuffle; the matching x tile
is the contiguous slice x[:, t*BK:(t+1)*BK] (gathered through ``perm`` under act-order).
The single loop with one x load and one word load per step is what Triton's software
pipeliner handles best (``num_stages`` buffers of each, loads issued stages ahead).

Decode (int mode) in 16-bit floats: ``code | 0x6400`` read as float16 is 1024 + code
exactly, and subtracting 1024 + zero (also exact) gives q - zero as a small integer, with
no int->float conversion. Then either the weight is scaled before the dot (one multiply
per weight; bf16 activations do this in float32), or, with ``SCALE_AFTER`` (a step inside
one group), the dot runs on the integer-valued weights and its [BM, BNT] float32 result is
scaled per column: one multiply per output instead of per weight, which pays at small BM.
lut mode (NF4/FP4): the weight is lut[code] (float32 gather), scaled the same ways.

Tiles of BNT columns span BNT / BN layout column blocks; the word tile is loaded as
[PK, BNT/BN, BN] (each block a contiguous run) and reshaped to [PK, BNT].
SWAP computes the transposed product for skinny M (weights as the wide left operand).
Grid: (row blocks x column blocks, grouped for L2 reuse; K splits). Split-K partial sums
meet in ``epilogue.store_output``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import grouped_tile, load_x_tile, store_output


@triton.jit
def int_gemm_tc_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, perm_ptr, lut_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KC, NB, G, stride_xm, stride_ym, steps_per_split, splits,
    BITS: tl.constexpr, BN: tl.constexpr, PK: tl.constexpr, GS: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_N: tl.constexpr, BM: tl.constexpr, BNT: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, SWAP: tl.constexpr, SCALE_AFTER: tl.constexpr, HALF_MATH: tl.constexpr,
    FLAT: tl.constexpr, ONE_GROUP: tl.constexpr,
    MODE_LUT: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n, num_n = grouped_tile(pid, M, N, BM, BNT, GROUP_M)
    CPW: tl.constexpr = 32 // BITS
    KCH: tl.constexpr = CPW * PK
    JS: tl.constexpr = BK // PK  # codes of a word per step
    S: tl.constexpr = CPW // JS  # steps per chunk
    NBT: tl.constexpr = BNT // BN  # layout blocks per tile
    dt = x_ptr.dtype.element_ty

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BNT + tl.arange(0, BNT)
    mmask = rm < M
    kb = tl.arange(0, BK)
    if FLAT:
        # Row kr of a step's tile is code kr // PK of word row kr % PK: each word is loaded
        # (from L1) once per code it holds, and the tile is decoded in place, [BK, BNT].
        w_col = (rn // BN).to(tl.int64) * (KC * PK * BN) + rn % BN  # [BNT]
        w_ptrs = qw_ptr + w_col[None, :] + (kb % PK)[:, None] * BN  # [BK, BNT]
        bmask = (rn // BN < NB)[None, :]
    else:
        blk = pid_n * NBT + tl.arange(0, NBT)
        w_ptrs = (qw_ptr + blk.to(tl.int64)[None, :, None] * (KC * PK * BN)
                  + tl.arange(0, PK)[:, None, None] * BN + tl.arange(0, BN)[None, None, :])  # [PK, NBT, BN]
        bmask = (blk < NB)[None, :, None]
    x_rows = x_ptr + rm.to(tl.int64) * stride_xm
    jj = tl.arange(0, JS)
    if MODE_LUT:
        lut = tl.load(lut_ptr + tl.arange(0, 1 << BITS))  # the code book, held by the program
    t_begin = pid_k * steps_per_split
    t_end = tl.minimum(t_begin + steps_per_split, KC * S)
    if SWAP:
        acc = tl.zeros([BNT, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BNT], dtype=tl.float32)
    for t in range(t_begin, t_end):
        c = t // S
        if EVEN_N:
            words = tl.load(w_ptrs + c * (PK * BN))
        else:
            words = tl.load(w_ptrs + c * (PK * BN), mask=bmask, other=0)
        if FLAT:
            j = (t % S) * JS + kb // PK  # code position of each row, [BK]
            q = (words >> (BITS * j)[:, None]) & ((1 << BITS) - 1)  # [BK, BNT]
        else:
            j = (t % S) * JS + jj  # code positions of this step, [JS]
            words = tl.reshape(words, [PK, BNT])
            q = (words[None, :, :] >> (BITS * j)[:, None, None]) & ((1 << BITS) - 1)  # [JS, PK, BNT]
        # Padding steps past the last group reuse its scale: codes 0, activations masked to 0.
        g0 = tl.minimum((t * BK) // GS, G - 1)  # group of the step's first column
        if ONE_GROUP:  # the whole step lies in group g0
            s_off = g0 * N + rn  # [BNT]
            qoff = s_off[None, :]
            if not FLAT:
                qoff = qoff[None, :, :]
            smask = (rn < N)[None, :]
        else:
            g = tl.minimum((c * KCH + j * PK) // GS, G - 1)
            if FLAT:
                qoff = g[:, None] * N + rn[None, :]  # [BK, BNT]
            else:
                qoff = g[:, None, None] * N + rn[None, None, :]  # [JS, 1, BNT]
            smask = rn < N
        if MODE_LUT:
            w = tl.gather(lut, tl.reshape(q, [BK * BNT]), 0)  # float32
            if FLAT:
                w = tl.reshape(w, [BK, BNT])
            else:
                w = tl.reshape(w, [JS, PK, BNT])
            if not SCALE_AFTER:
                w = w * tl.load(s_ptr + qoff, mask=smask, other=0.0).to(tl.float32)
        else:
            v = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)  # 1024 + q, exact
            if HAS_ZERO:
                zz = tl.load(z_ptr + qoff, mask=smask, other=0.0) + 1024.0  # fp16, exact
            else:
                zz = 1024.0 + (1 << (BITS - 1))
            w = v - zz  # q - zero, exact in float16
            if not SCALE_AFTER:
                s = tl.load(s_ptr + qoff, mask=smask, other=0.0)
                if HALF_MATH:
                    w = w * s.to(tl.float16)  # one rounding, as the reference's
                else:
                    w = w.to(tl.float32) * s.to(tl.float32)
        w = w.to(dt)
        if not FLAT:
            w = tl.reshape(w, [BK, BNT])
        kk = t * BK + kb
        if EVEN_K:
            kmask = kb < BK
        else:
            kmask = kk < K
        xt = load_x_tile(x_rows, perm_ptr, kk, kmask, mmask, HAS_PERM, SWAP)
        if SWAP:
            if SCALE_AFTER:
                s = tl.load(s_ptr + s_off, mask=rn < N, other=0.0).to(tl.float32)
                acc += tl.dot(tl.trans(w), xt) * s[:, None]
            else:
                acc = tl.dot(tl.trans(w), xt, acc)  # [BNT, BM]
        else:
            if SCALE_AFTER:
                s = tl.load(s_ptr + s_off, mask=rn < N, other=0.0).to(tl.float32)
                acc += tl.dot(xt, w) * s[None, :]
            else:
                acc = tl.dot(xt, w, acc)  # [BM, BNT]
    if SWAP:
        acc = tl.trans(acc)
    store_output(acc, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr,
                 pid_m * num_n + pid_n, splits, SPLIT_K, HAS_BIAS)
