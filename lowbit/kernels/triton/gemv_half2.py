"""4-bit GEMV in packed half pairs (f16x2): decode, M = 1, fp16 or bf16 activations; int4
affine codes, or (LUT) a 16-entry code book (NF4/FP4: w = lut[q] * absmax).

At M = 1 the kernel streams the weight once; what keeps it from memory speed is the
instructions it issues per weight. ``gemv.py`` spends about five (fp32 math, and one
activation load and convert per weight, since each thread holds one column); here a word
of eight codes takes 13 (a shift, then per code pair a LOP3 and two f16x2 FMAs, see
``half2``), the activations are loaded and paired once per row and shared by the
columns a thread holds, and the scale is applied in fp32 once per chunk and column.

Pairing: code j and code j + 4 of a word sit in the two 16-bit halves (layout: code j of
word r is kernel-order column c*256 + 32 j + r), so the pair's activations are x at those
two columns, and its halves lie in groups g and g + 128 / GS. The f16x2 partial sums are
kept per distinct group pair (one accumulator for GS >= 128, two for 64, four for 32),
summed over the four rows of a chunk a thread holds, and turned into fp32 with their scales
at the chunk's end. A thread holds rows 4 rr + i (i = 0..3) of a chunk, so the activations
of code j for its four rows are four consecutive halves: one 8-byte load, then PRMTs pair
them with code j + 4's (act-order gathers them one by one instead).

bf16 activations are rounded to fp16 as they are paired (same mantissa or more; beyond
+-65504 they would become inf, far above what reaches a linear layer), the output is
written in x's dtype. The f16x2 partial sums cover 16 products (q - zero) / 16 * x per lane
before they go to fp32: overflow needs activations in the thousands in several of the 16
columns a lane sums (one outlier channel of ~3000, as in the demo model, is far from it).

Code books (LUT) take the same layout and loop: a code pair becomes f16x2 (lut[q_j],
lut[q_j+4]) by two warp shuffles (``half2.dot4_lut``) instead of LOP3 + FMA, there is no
zero term, and the scales are the blocks' absmax (fp16, or fp32 outside its range).

Grid: (column blocks, K splits, rows); split-K partial sums meet in ``store_output``.
With PDL (``pdl``) the first chunk's weights are loaded before waiting for the kernel ahead,
and with PREDECODE also decoded (``half2.decode_lut4`` / ``decode_int4``: the values the
fused asm would multiply, pinned ahead of the wait by ``half2.pin_before_wait``), so that
only the FMAs with x follow the wait; later steps then decode at their start.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import store_output
from .half2 import (decode_int4, decode_lut4, dot4_lut, dot4_values, dot_codes, high_term, pack, pair_quads,
                    pair_quads_bf16, pin_before_wait, unpack)
from .pdl import release, wait


@triton.jit
def _row_pointers(s_ptr, zp_ptr, rr, n, N, C: tl.constexpr, PR: tl.constexpr, GS: tl.constexpr,
                  NACC: tl.constexpr):
    """Each row slot's scales and zero pairs in the step from chunk 0 ([1 or C * PR, BNP]
    pointers, columns n included): computed once, so a step adds one uniform offset instead
    of recomputing 64-bit addresses from per-row indices."""
    if C == 1:
        return s_ptr + n, zp_ptr + n
    else:
        GPC: tl.constexpr = 256 // GS if GS <= 256 else 0  # groups a chunk (_group_pair's FAST_G)
        return s_ptr + ((rr // PR) * GPC * N + n), zp_ptr + ((rr // PR) * NACC * N + n)


@triton.jit
def _group_pair(s_ptr, zp_ptr, c, cr, a, n, rows, mask, N, G, GS: tl.constexpr, NACC: tl.constexpr,
                HAS_ZERO: tl.constexpr, FAST_G: tl.constexpr, INTERPRET: tl.constexpr):
    """Accumulator ``a`` of the step from chunk c, row slots in chunks cr (c, or [C * PR, 1]):
    (zero term of the low code position, scale of the low lanes, of the high lanes), [1 or
    C * PR, BNP] each (groups as layout.half2_group_pairs). FAST_G: K a multiple of 256 and
    GS a divisor of 256, so no group lies past the last (no clamp) and ``rows``
    (``_row_pointers``) place the row slots."""
    HI: tl.constexpr = 128 // GS if GS <= 128 else 0
    s_rows, z_rows = rows
    if FAST_G:
        g = c * (256 // GS) + (32 * (a * 4 // NACC)) // GS
        sp = s_rows + g * N
        s_lo = tl.load(sp, mask=mask, other=0.0).to(tl.float32)
        s_hi = tl.load(sp + HI * N, mask=mask, other=0.0).to(tl.float32)
    else:
        g_lo = tl.minimum((cr * 256 + 32 * (a * 4 // NACC)) // GS, G - 1)
        g_hi = tl.minimum(g_lo + HI, G - 1)
        s_lo = tl.load(s_ptr + g_lo * N + n, mask=mask, other=0.0).to(tl.float32)
        s_hi = tl.load(s_ptr + g_hi * N + n, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZERO:
        zt = tl.load(z_rows + (c * NACC + a) * N, mask=mask, other=0)
    else:
        half = tl.full(n.shape, -64.5, tl.float16)  # zero point 8: -(64 + 8 / 16)
        zt = pack(half, half, INTERPRET)
    return zt, s_lo, s_hi


@triton.jit
def _rows_chunk(c, rr, C: tl.constexpr, PR: tl.constexpr):
    """The chunk of each row slot in the step starting at chunk c: c itself (a scalar) for one
    chunk a step, else c + rr // PR ([C * PR, 1])."""
    if C == 1:
        return c
    else:
        return c + rr // PR


@triton.jit
def _chunk(src, c, c_end, at, PK: tl.constexpr, BN: tl.constexpr, GS: tl.constexpr, NACC: tl.constexpr,
           C: tl.constexpr, HAS_ZERO: tl.constexpr, FAST_G: tl.constexpr, INTERPRET: tl.constexpr):
    """The four word tiles of the C chunks from c (int32 [C * PR, BNP]: chunk c + rr // PR,
    row 4 (rr % PR) + i in tile i; chunks lie one after the other, so slot rr's words are at
    rr * 4 BN) and accumulator 0's group pair (``_group_pair``); zeros past c_end (the
    interpreter takes no scalar masks). ``src``: (w_base, s_ptr, zp_ptr); ``at``: the
    program's (rr, n, rows, nmask, N, G)."""
    w_base, s_ptr, zp_ptr = src
    rr, n, rows, nmask, N, G = at
    p = w_base + c * (PK * BN)
    cr = _rows_chunk(c, rr, C, PK // 4)
    live = rr * 0 + cr < c_end
    w0 = tl.load(p, mask=live, other=0)
    w1 = tl.load(p + BN, mask=live, other=0)
    w2 = tl.load(p + 2 * BN, mask=live, other=0)
    w3 = tl.load(p + 3 * BN, mask=live, other=0)
    zt, s_lo, s_hi = _group_pair(s_ptr, zp_ptr, c, cr, 0, n, rows, nmask & (n * 0 + cr < c_end), N, G, GS, NACC,
                                 HAS_ZERO, FAST_G, INTERPRET)
    return w0, w1, w2, w3, zt, s_lo, s_hi


@triton.jit
def _x_pairs(x_row, x_quads, perm_ptr, kk, K, X_VEC: tl.constexpr, HAS_PERM: tl.constexpr, EVEN_K: tl.constexpr,
             INTERPRET: tl.constexpr):
    """f16x2 of the activations at kernel-order columns (kk + i, kk + 128 + i), i = 0..3;
    kk [C * PR, 1] a multiple of 4; X_VEC: x_quads points at kk's four (int64 pointers)."""
    if X_VEC:
        if EVEN_K:
            xa = tl.load(x_quads)
            xb = tl.load(x_quads + 32)
        else:
            xa = tl.load(x_quads, mask=kk < K, other=0)
            xb = tl.load(x_quads + 32, mask=kk + 128 < K, other=0)
        if x_row.dtype.element_ty == tl.bfloat16:
            return pair_quads_bf16(xa, xb, INTERPRET)
        else:
            return pair_quads(xa, xb, INTERPRET)
    else:
        return (_x_pair(x_row, perm_ptr, kk, K, HAS_PERM, EVEN_K, INTERPRET),
                _x_pair(x_row, perm_ptr, kk + 1, K, HAS_PERM, EVEN_K, INTERPRET),
                _x_pair(x_row, perm_ptr, kk + 2, K, HAS_PERM, EVEN_K, INTERPRET),
                _x_pair(x_row, perm_ptr, kk + 3, K, HAS_PERM, EVEN_K, INTERPRET))


@triton.jit
def _x_pair(x_row, perm_ptr, kk, K, HAS_PERM: tl.constexpr, EVEN_K: tl.constexpr, INTERPRET: tl.constexpr):
    """f16x2 of the activations at kernel-order columns kk and kk + 128."""
    kh = kk + 128
    if HAS_PERM:
        xi_lo = tl.load(perm_ptr + kk, mask=kk < K, other=0)
        xi_hi = tl.load(perm_ptr + kh, mask=kh < K, other=0)
    else:
        xi_lo = kk
        xi_hi = kh
    if EVEN_K:
        x_lo = tl.load(x_row + xi_lo)
        x_hi = tl.load(x_row + xi_hi)
    else:
        x_lo = tl.load(x_row + xi_lo, mask=kk < K, other=0.0)
        x_hi = tl.load(x_row + xi_hi, mask=kh < K, other=0.0)
    return pack(x_lo.to(tl.float16), x_hi.to(tl.float16), INTERPRET)  # bf16: rounded to fp16


@triton.jit
def _dot4(acc2, w0, w1, w2, w3, x2, zt, HIGH: tl.constexpr, INTERPRET: tl.constexpr):
    """acc2 + the code pair at HIGH of the thread's four rows (words w_i, activations x2[i])."""
    p0, p1, p2, p3 = x2
    acc2 = dot_codes(w0, p0, zt, acc2, HIGH, INTERPRET)
    acc2 = dot_codes(w1, p1, zt, acc2, HIGH, INTERPRET)
    acc2 = dot_codes(w2, p2, zt, acc2, HIGH, INTERPRET)
    return dot_codes(w3, p3, zt, acc2, HIGH, INTERPRET)


@triton.jit
def _pair_dot(acc2, w0, w1, w2, w3, x2, zl, zh, lanes_ptr, JP: tl.constexpr, LUT: tl.constexpr,
              INTERPRET: tl.constexpr):
    """acc2 + code pair (JP, JP + 4) of the thread's four rows (words w_i, activations x2[i]):
    looked up in the code book (LUT), else int4 with the zero terms of the low (zl) and high
    (zh) code position."""
    if LUT:
        return dot4_lut(acc2, w0, w1, w2, w3, x2, lanes_ptr, JP, INTERPRET)
    else:
        if JP >= 2:  # codes 2, 3 sit 8 bits up
            w0, w1, w2, w3 = _shr8(w0), _shr8(w1), _shr8(w2), _shr8(w3)
        return _dot4(acc2, w0, w1, w2, w3, x2, zh if JP % 2 else zl, JP % 2 == 1, INTERPRET)


@triton.jit
def _decode_step(w0, w1, w2, w3, zl, lanes_ptr, LUT: tl.constexpr, INTERPRET: tl.constexpr):
    """The values of code pairs 0..3 of the thread's four words (four tuples of four f16x2):
    looked up in the code book (LUT), else int4 of one group pair (zero term zl)."""
    if LUT:
        return (decode_lut4(w0, w1, w2, w3, lanes_ptr, 0, INTERPRET),
                decode_lut4(w0, w1, w2, w3, lanes_ptr, 1, INTERPRET),
                decode_lut4(w0, w1, w2, w3, lanes_ptr, 2, INTERPRET),
                decode_lut4(w0, w1, w2, w3, lanes_ptr, 3, INTERPRET))
    else:
        zh = high_term(zl, INTERPRET)
        u0, u1, u2, u3 = _shr8(w0), _shr8(w1), _shr8(w2), _shr8(w3)  # codes 2, 3 sit 8 bits up
        return (decode_int4(w0, w1, w2, w3, zl, False, INTERPRET),
                decode_int4(w0, w1, w2, w3, zh, True, INTERPRET),
                decode_int4(u0, u1, u2, u3, zl, False, INTERPRET),
                decode_int4(u0, u1, u2, u3, zh, True, INTERPRET))


@triton.jit
def _flush(acc, acc2, s_lo, s_hi, INTERPRET: tl.constexpr):
    lo, hi = unpack(acc2, INTERPRET)
    return acc + lo * s_lo + hi * s_hi


@triton.jit
def _shr8(w):
    return (w.to(tl.uint32, bitcast=True) >> 8).to(tl.int32, bitcast=True)  # logical: one SHF


@triton.jit
def int4_gemv_half2_kernel(
    x_ptr, qw_ptr, s_ptr, zp_ptr, perm_ptr, lanes_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KC, G, stride_xm, stride_ym, chunks_per_split, splits,
    BN: tl.constexpr, BNP: tl.constexpr, C: tl.constexpr, PK: tl.constexpr, GS: tl.constexpr, NACC: tl.constexpr,
    SPLIT_K: tl.constexpr, LUT: tl.constexpr,
    EVEN_K: tl.constexpr, X_VEC: tl.constexpr, PREFETCH: tl.constexpr, HAS_ZERO: tl.constexpr,
    HAS_PERM: tl.constexpr, HAS_BIAS: tl.constexpr,
    INTERPRET: tl.constexpr, PDL: tl.constexpr, SILU: tl.constexpr, PREDECODE: tl.constexpr,
):
    release(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    m = tl.program_id(2)
    PR: tl.constexpr = PK // 4  # a chunk's row slots: slot r holds chunk rows 4 r .. 4 r + 3
    # C chunks a step, side by side in the tile (slot rr: chunk rr // PR of the step; they meet
    # in the CTA's sum at the end, not through split-K), over BNP of a layout block's BN columns
    rr = tl.arange(0, C * PR)[:, None]
    rn = tl.arange(0, BNP)[None, :]
    n = pid_n * BNP + rn
    nmask = n < N
    c_begin = pid_k * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, KC)
    PB: tl.constexpr = BN // BNP  # programs a layout block
    w_base = qw_ptr + (pid_n // PB).to(tl.int64) * KC * (PK * BN) + rr * (4 * BN) + (pid_n % PB) * BNP + rn
    k_off = (rr // PR) * 256 + (rr % PR) * 4  # slot rr's first activation column in a step
    FAST_G: tl.constexpr = EVEN_K and GS <= 256 and 256 % GS == 0
    rows = _row_pointers(s_ptr, zp_ptr, rr, n, N, C, PR, GS, NACC)
    src = (w_base, s_ptr, zp_ptr)
    at = (rr, n, rows, nmask, N, G)
    x_row = x_ptr + m.to(tl.int64) * stride_xm
    x_quads = x_row.to(tl.pointer_type(tl.int64)) + k_off // 4  # slot rr's first four activations (X_VEC)
    acc = tl.zeros([C * PR, BNP], dtype=tl.float32)
    zero2 = tl.zeros([C * PR, BNP], dtype=tl.int32)  # f16x2 (0, 0)
    # PREFETCH chunks ahead (0, 1 or 2; n* the next chunk, nn* the one after): their words,
    # scales and zeros are issued before this chunk's arithmetic, so each program keeps
    # several chunks in flight instead of waiting out a memory round trip per chunk.
    if PREFETCH >= 1:
        n0, n1, n2, n3, nz0, nsl0, nsh0 = _chunk(src, c_begin, c_end, at, PK, BN, GS, NACC, C, HAS_ZERO,
                                                 FAST_G, INTERPRET)
    if PREFETCH >= 2:
        nn0, nn1, nn2, nn3, nnz0, nnsl0, nnsh0 = _chunk(src, c_begin + C, c_end, at, PK, BN, GS, NACC, C, HAS_ZERO,
                                                        FAST_G, INTERPRET)
    if PREDECODE:
        # The first step's codes become their values (code-book shuffles, or int4's LOP3 and
        # zero-point FMA: no x needed) while the kernel ahead may still run; after the wait
        # only the FMAs with x are left of it.
        d0, d1, d2, d3 = _decode_step(n0, n1, n2, n3, nz0, lanes_ptr, LUT, INTERPRET)
        pin_before_wait(d0, d1, d2, d3, lanes_ptr, INTERPRET)
    wait(PDL)  # x comes from the kernel ahead; only weights were read so far
    for c in range(c_begin, c_end, C):
        if PREFETCH >= 2:
            w0, w1, w2, w3, zl0, sl0, sh0 = n0, n1, n2, n3, nz0, nsl0, nsh0
            n0, n1, n2, n3, nz0, nsl0, nsh0 = nn0, nn1, nn2, nn3, nnz0, nnsl0, nnsh0
            nn0, nn1, nn2, nn3, nnz0, nnsl0, nnsh0 = _chunk(src, c + 2 * C, c_end, at, PK, BN, GS, NACC, C, HAS_ZERO,
                                                            FAST_G, INTERPRET)
        elif PREFETCH == 1:
            w0, w1, w2, w3, zl0, sl0, sh0 = n0, n1, n2, n3, nz0, nsl0, nsh0
            n0, n1, n2, n3, nz0, nsl0, nsh0 = _chunk(src, c + C, c_end, at, PK, BN, GS, NACC, C, HAS_ZERO,
                                                     FAST_G, INTERPRET)
        else:
            w0, w1, w2, w3, zl0, sl0, sh0 = _chunk(src, c, c_end, at, PK, BN, GS, NACC, C, HAS_ZERO,
                                                   FAST_G, INTERPRET)
        if PREDECODE:
            if c != c_begin:  # the first step's were decoded before the wait
                d0, d1, d2, d3 = _decode_step(w0, w1, w2, w3, zl0, lanes_ptr, LUT, INTERPRET)
        zh0 = high_term(zl0, INTERPRET)
        a0 = zero2
        cr = _rows_chunk(c, rr, C, PR)
        gmask = nmask if C == 1 else nmask & (cr < c_end)  # one chunk a step: c < c_end here
        if NACC > 1:
            zl1, sl1, sh1 = _group_pair(s_ptr, zp_ptr, c, cr, 1, n, rows, gmask, N, G, GS, NACC, HAS_ZERO, FAST_G,
                                        INTERPRET)
            zh1 = high_term(zl1, INTERPRET)
            a1 = zero2
        if NACC > 2:
            zl2, sl2, sh2 = _group_pair(s_ptr, zp_ptr, c, cr, 2, n, rows, gmask, N, G, GS, NACC, HAS_ZERO, FAST_G,
                                        INTERPRET)
            zl3, sl3, sh3 = _group_pair(s_ptr, zp_ptr, c, cr, 3, n, rows, gmask, N, G, GS, NACC, HAS_ZERO, FAST_G,
                                        INTERPRET)
            zh2 = high_term(zl2, INTERPRET)
            zh3 = high_term(zl3, INTERPRET)
            a2 = zero2
            a3 = zero2
        x_step = x_quads + c * 64  # one 64-bit add a step; the code pairs' offsets are immediates
        for jp in tl.static_range(4):
            # code jp (and jp + 4 in the high halves)
            x2 = _x_pairs(x_row, x_step + 8 * jp, perm_ptr, c * 256 + 32 * jp + k_off, K, X_VEC, HAS_PERM, EVEN_K,
                          INTERPRET)
            # the accumulator of this code pair's groups
            if PREDECODE:
                dv = (d0, d1, d2, d3)[jp]
                if jp * NACC // 4 == 0:
                    a0 = dot4_values(a0, dv, x2, INTERPRET)
                elif jp * NACC // 4 == 1:
                    a1 = dot4_values(a1, dv, x2, INTERPRET)
                elif jp * NACC // 4 == 2:
                    a2 = dot4_values(a2, dv, x2, INTERPRET)
                else:
                    a3 = dot4_values(a3, dv, x2, INTERPRET)
            elif jp * NACC // 4 == 0:
                a0 = _pair_dot(a0, w0, w1, w2, w3, x2, zl0, zh0, lanes_ptr, jp, LUT, INTERPRET)
            elif jp * NACC // 4 == 1:
                a1 = _pair_dot(a1, w0, w1, w2, w3, x2, zl1, zh1, lanes_ptr, jp, LUT, INTERPRET)
            elif jp * NACC // 4 == 2:
                a2 = _pair_dot(a2, w0, w1, w2, w3, x2, zl2, zh2, lanes_ptr, jp, LUT, INTERPRET)
            else:
                a3 = _pair_dot(a3, w0, w1, w2, w3, x2, zl3, zh3, lanes_ptr, jp, LUT, INTERPRET)
        acc = _flush(acc, a0, sl0, sh0, INTERPRET)
        if NACC > 1:
            acc = _flush(acc, a1, sl1, sh1, INTERPRET)
        if NACC > 2:
            acc = _flush(acc, a2, sl2, sh2, INTERPRET)
            acc = _flush(acc, a3, sl3, sh3, INTERPRET)
    if LUT:
        total = tl.sum(acc, axis=0)  # [BNP]
    else:
        total = tl.sum(acc, axis=0) * 16.0  # [BNP]; the f16x2 values were (q - zero) / 16
    rm = m + tl.arange(0, 1)
    cols = pid_n * BNP + tl.arange(0, BNP)
    store_output(total[None, :], rm, cols, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr,
                 m * tl.num_programs(0) + pid_n, splits, SPLIT_K, HAS_BIAS, SILU)
