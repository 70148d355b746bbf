"""Shared pieces of the kernels: the tile order, decoding a code slab, and the output store
with split-K.

Split-K without a second launch: each of the SPLIT programs of an output tile adds its
float32 partial sums into a workspace with atomics, then takes a ticket from the tile's
counter; the program that draws the last ticket reads the sums back (an atomic add of 0, so
the read comes from L2, where the atomics landed), stores zeros over them, adds the bias, writes the
output in its dtype and resets the counter. The workspace and counters therefore stay zero
between calls: no memset launch, and the same buffers work inside a CUDA graph.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BNT: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n, tiles per row) of program ``pid`` over a BM x BNT tiling of [M, N], in
    grouped order: GROUP_M row blocks sweep the same column blocks while they sit in L2."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BNT)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % group_rows, (pid % width) // group_rows, num_n


@triton.jit
def load_x_tile(x_rows, perm_ptr, kk, kmask, mmask, HAS_PERM: tl.constexpr, SWAP: tl.constexpr):
    """The activations of rows ``x_rows`` [BM] (pointers) at kernel-order columns ``kk`` [BK]
    (through the act-order permutation when HAS_PERM): [BM, BK], or [BK, BM] when SWAP."""
    if HAS_PERM:
        xi = tl.load(perm_ptr + kk, mask=kmask, other=0)
    else:
        xi = kk
    if SWAP:
        xt = tl.load(x_rows[None, :] + xi[:, None], mask=mmask[None, :] & kmask[:, None], other=0.0)
    else:
        xt = tl.load(x_rows[:, None] + xi[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
    return xt


@triton.jit
def decode_slab(words, hi, magic, lut_ptr, J: tl.constexpr, BITS: tl.constexpr, MODE_LUT: tl.constexpr):
    """Code J of every word -> float32.

    int mode: the code is masked in place and ORed into the exponent of 2^23, so the float
    reads 2^23 + q * 2^(BITS*jj) (jj = J mod codes-per-half) exactly: no int->float
    conversion (a slow instruction) and one logic op per code. ``magic`` is 0x4B000000
    passed at run time on purpose: in a register it lets mask-and-or be a single LOP3
    (a LOP3 takes one immediate, and the mask is already one). ``int_value`` finishes.
    lut mode (4-bit only): lut[q], read from a 16-entry float32 table.
    """
    HALF: tl.constexpr = 16 // BITS
    if J < HALF:
        src = words
    else:
        src = hi  # words >> 16: the upper half, so every code sits in the low 16 bits
    if MODE_LUT:
        q = (src >> (BITS * (J % HALF))) & ((1 << BITS) - 1)
        return tl.load(lut_ptr + q)
    else:
        return ((src & (((1 << BITS) - 1) << (BITS * (J % HALF)))) | magic).to(tl.float32, bitcast=True)


@triton.jit
def zero_term(z, J: tl.constexpr, BITS: tl.constexpr):
    """-(2^23 / 2^(BITS*jj) + zero): with it, v * 2^-(BITS*jj) + zero_term = q - zero, exactly
    (one FMA: v * 2^-(BITS*jj) is exact, and so is the sum, an integer below 2^16)."""
    HALF: tl.constexpr = 16 // BITS
    return (-8388608.0 / (1 << (BITS * (J % HALF)))) - z  # one FADD (a separate negation otherwise)


@triton.jit
def int_value(v, zt, J: tl.constexpr, BITS: tl.constexpr):
    """q - zero (float32) from a decoded slab v and its ``zero_term``."""
    HALF: tl.constexpr = 16 // BITS
    return v * (1.0 / (1 << (BITS * (J % HALF)))) + zt


@triton.jit
def _write(out, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if SILU:
        # Columns 2i, 2i + 1 are gate and up of feature i (an even tile start): y has N / 2
        # columns, silu(gate) * up, in float32 before the one rounding.
        BM: tl.constexpr = out.shape[0]
        BN: tl.constexpr = out.shape[1]
        g, u = tl.split(tl.reshape(out, [BM, BN // 2, 2]))
        out = g / (1.0 + tl.exp(-g)) * u
        rn = tl.split(tl.reshape(rn, [BN // 2, 2]))[0] // 2
        N = N // 2
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_output(acc, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, tile_id, splits,
                 SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr = False):
    """acc float32 [BM, BN] for rows rm [BM] and columns rn [BN] -> y (dtype of y_ptr).

    With SPLIT_K, ``splits`` programs contribute to this tile. The workspace is float32
    [M, N] (row stride N), the counters int32, one per tile. SILU: y [M, N / 2] gets
    silu(column 2i) * column 2i + 1 (a gate|up layer with interleaved outputs).
    """
    if not SPLIT_K:
        _write(acc, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS, SILU)
    else:
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        ws = ws_ptr + rm[:, None] * N + rn[None, :]
        tl.atomic_add(ws, acc, mask=mask, sem="relaxed")
        # Every thread's partial sums must be issued before the ticket releases them.
        tl.debug_barrier()
        ticket = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
        if ticket == splits - 1:
            # Read the sums where the atomics left them (L2), then leave zeros behind. The
            # ticket's acquire already orders these reads after every split's sums; an
            # acq_rel atomic per element would fence each read (2-3x slower split-K, H100 run 17).
            total = tl.atomic_add(ws, tl.zeros_like(acc), mask=mask, sem="relaxed")
            total = tl.where(mask, total, 0.0)  # masked-off lanes return nothing defined
            _write(total, rm, rn, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS, SILU)
            # Zeros and a zero ticket for the next call. Relaxed: nothing of this grid reads
            # them again (every split has taken its ticket), and the next grid starts using
            # them only after this one has ended (stream order; under PDL, its wait returns
            # when this grid has finished and its memory is visible). A release here (the
            # default acq_rel) fenced on the zeros' stores and waited for the exchange: two
            # L2 round trips of the last program, before its output was written.
            tl.store(ws, tl.zeros_like(acc), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed")
