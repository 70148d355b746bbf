"""int4 matmul for 2..16 activation rows (fp16) on mma.sync, weights decoded in f16x2.

At M <= 16 the weight stream still sets the time, so the decode must stay as cheap as in
``gemv_half2``: two codes of a word decode into one f16x2 register (codes j and j + 4:
kernel-order columns k and k + 128), which the m16n8k16 tensor-core MMA takes directly as a
B-fragment register. An MMA sums over its 16 k slots in any order, so each lane's slots
are simply "its" columns: lane (g, q) = (lane / 4, lane % 4) holds words of chunk rows
16 rh + 4 q + i (i = 0..3) for columns 32 h + 4 g + v (v = 0..3, one 16-byte load), and
feeds MMA v with B = (pair jp, pair jp + 1) of a word; the A fragment is x at the same k
for rows g and g + 8 (four consecutive halves of x: one 8-byte load, then PRMTs). Column
c8 of MMA v is block column 32 h + 4 c8 + v.

Per word (8 weights): a shift, 4 LOP3, 4 FMA (q - zero, exact), 4 MUL (times the scale, as
fp16 like the dequantized reference weight) and 2 MMAs. Scales of both groups of a pair go
in before the MMA, so the kernel takes group sizes >= 128 (one group pair per chunk).

Lane layout: the [2, H, 8, 4, 4] word tensors (rh, h, g, q, v) are loaded 16 bytes along v,
so Triton puts q on lanes 0-3 and g on lanes 4-31 (q fastest) - the MMA fragment layout.
The GPU tests check it end to end. Under TRITON_INTERPRET the MMA is emulated with the
same fragments (``_mma_emulated``): the sums over lanes written as sums over tensor axes.

Grid: (column blocks, K splits).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .epilogue import store_points
from .half2 import high_term, pack, pair_quads, unpack

_ASM_MMA = tl.constexpr(
    "{ .reg .b32 h0, h1, v0, v1, c16, c256; "
    "lop3.b32 h0, $4, 0x000f000f, 0x64006400, 0xea; lop3.b32 h1, $4, 0x00f000f0, 0x64006400, 0xea; "
    "mov.b32 c16, 0x2c002c00; mov.b32 c256, 0x1c001c00; "
    "fma.rn.f16x2 v0, h0, c16, $5; fma.rn.f16x2 v1, h1, c256, $6; "
    "mul.rn.f16x2 v0, v0, $7; mul.rn.f16x2 v1, v1, $7; "
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {$8, $9, $10, $11}, {v0, v1}, "
    "{$12, $13, $14, $15}; }"
)


@triton.jit
def _weights_emulated(src, zt, s16, HIGH: tl.constexpr):
    """The f16x2 B register of the code pair at HIGH, as (low, high) float32 (interpreter)."""
    mask: tl.constexpr = 0x00F000F0 if HIGH else 0x000F000F
    mul: tl.constexpr = 1.0 / 256 if HIGH else 1.0 / 16
    h_lo, h_hi = unpack((src & mask) | 0x64006400, True)
    z_lo, z_hi = unpack(zt, True)
    s_lo, s_hi = unpack(s16, True)
    return (((h_lo * mul + z_lo) * s_lo).to(tl.float16).to(tl.float32),
            ((h_hi * mul + z_hi) * s_hi).to(tl.float16).to(tl.float32))


@triton.jit
def _lane_sum(a, b):
    """sum over q' of a[rh, 0, m, q'] * b[rh, h, c8, q', v] -> [rh, h, m, c8, v] (a: [2, 1, 8, 4, 1])."""
    return tl.sum(a[:, :, :, None, :, :] * b[:, :, None, :, :, :], axis=4)


@triton.jit
def _by_lane(t):
    """[rh, h, m, c8, v] -> (t at c8 = 2q, t at c8 = 2q + 1) as [rh, h, m, q, v] (an MMA's C layout)."""
    RH: tl.constexpr = t.shape[0]
    H: tl.constexpr = t.shape[1]
    t = tl.permute(tl.reshape(t, [RH, H, 8, 4, 2, 4]), [0, 1, 2, 3, 5, 4])
    return tl.split(t)


@triton.jit
def _mma_emulated(src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3):
    b0_lo, b0_hi = _weights_emulated(src, zl, s16, False)
    b1_lo, b1_hi = _weights_emulated(src, zh, s16, True)
    a0_lo, a0_hi = unpack(a0, True)
    a1_lo, a1_hi = unpack(a1, True)
    a2_lo, a2_hi = unpack(a2, True)
    a3_lo, a3_hi = unpack(a3, True)
    top = _lane_sum(a0_lo, b0_lo) + _lane_sum(a0_hi, b0_hi) + _lane_sum(a2_lo, b1_lo) + _lane_sum(a2_hi, b1_hi)
    bot = _lane_sum(a1_lo, b0_lo) + _lane_sum(a1_hi, b0_hi) + _lane_sum(a3_lo, b1_lo) + _lane_sum(a3_hi, b1_hi)
    t0, t1 = _by_lane(top)
    t2, t3 = _by_lane(bot)
    return c0 + t0, c1 + t1, c2 + t2, c3 + t3


@triton.jit
def _mma(src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3, INTERPRET: tl.constexpr):
    """One m16n8k16 MMA per element of src (the word tensor): C += A x B, B decoded from the
    low (pair jp) and high (pair jp + 1) code positions of src."""
    if INTERPRET:
        return _mma_emulated(src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3)
    else:
        return tl.inline_asm_elementwise(
            _ASM_MMA, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f", [src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def _x_load(x64, kk, rmask, K, EVEN_K: tl.constexpr):
    """Four halves of x at kernel-order columns kk .. kk + 3 as one int64 ([2, 1, 8, 4, 1])."""
    if EVEN_K:
        return tl.load(x64 + kk // 4, mask=rmask, other=0)
    else:
        return tl.load(x64 + kk // 4, mask=rmask & (kk < K), other=0)


@triton.jit
def int4_mma16_kernel(
    x_ptr, qw_ptr, s_ptr, zp_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, KC, G, stride_xm, stride_ym, chunks_per_split, splits,
    BN: tl.constexpr, PK: tl.constexpr, GS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    H: tl.constexpr = BN // 32
    rh = tl.arange(0, 2)[:, None, None, None, None]
    h = tl.arange(0, H)[None, :, None, None, None]
    g = tl.arange(0, 8)[None, None, :, None, None]
    q = tl.arange(0, 4)[None, None, None, :, None]
    v = tl.arange(0, 4)[None, None, None, None, :]
    col = 32 * h + 4 * g + v  # [1, H, 8, 1, 4]: this lane's columns in the block
    n = pid_n * BN + col
    nmask = n < N
    w_base = qw_ptr + pid_n.to(tl.int64) * KC * (PK * BN) + (16 * rh + 4 * q) * BN + col  # [2, H, 8, 4, 4]
    x64 = x_ptr.to(tl.pointer_type(tl.int64))
    xrow = stride_xm // 4  # int64 words per x row
    x_top = x64 + g * xrow  # rows g ([1, 1, 8, 1, 1]; the column comes with kk)
    x_bot = x_top + 8 * xrow  # rows g + 8
    m_top = g < M
    m_bot = g + 8 < M
    HI: tl.constexpr = 1 if GS == 128 else 0
    c_begin = pid_k * chunks_per_split
    c_end = tl.minimum(c_begin + chunks_per_split, KC)
    c0 = tl.zeros([2, H, 8, 4, 4], dtype=tl.float32)
    c1 = c0
    c2 = c0
    c3 = c0
    for c in range(c_begin, c_end):
        w_ptrs = w_base + c * (PK * BN)
        w0 = tl.load(w_ptrs)
        w1 = tl.load(w_ptrs + BN)
        w2 = tl.load(w_ptrs + 2 * BN)
        w3 = tl.load(w_ptrs + 3 * BN)
        g_lo = tl.minimum((c * 256) // GS, G - 1)
        g_hi = tl.minimum(g_lo + HI, G - 1)
        s_lo = tl.load(s_ptr + g_lo * N + n, mask=nmask, other=0.0).to(tl.float32) * 16.0
        s_hi = tl.load(s_ptr + g_hi * N + n, mask=nmask, other=0.0).to(tl.float32) * 16.0
        s16 = pack(s_lo.to(tl.float16), s_hi.to(tl.float16), INTERPRET)  # the pairs carry (q - zero) / 16
        if HAS_ZERO:
            zl = tl.load(zp_ptr + c * N + n, mask=nmask, other=0)
        else:
            half = tl.full(n.shape, -64.5, tl.float16)  # zero point 8: -(64 + 8 / 16)
            zl = pack(half, half, INTERPRET)
        zh = high_term(zl, INTERPRET)
        for jj in tl.static_range(2):  # code pairs (0, 1) then (2, 3): 8 bits up
            kk = c * 256 + 64 * jj + 16 * rh + 4 * q  # [2, 1, 1, 4, 1]
            ta = pair_quads(_x_load(x_top, kk, m_top, K, EVEN_K), _x_load(x_top, kk + 128, m_top, K, EVEN_K),
                            INTERPRET)
            tb = pair_quads(_x_load(x_top, kk + 32, m_top, K, EVEN_K),
                            _x_load(x_top, kk + 160, m_top, K, EVEN_K), INTERPRET)
            ba = pair_quads(_x_load(x_bot, kk, m_bot, K, EVEN_K), _x_load(x_bot, kk + 128, m_bot, K, EVEN_K),
                            INTERPRET)
            bb = pair_quads(_x_load(x_bot, kk + 32, m_bot, K, EVEN_K),
                            _x_load(x_bot, kk + 160, m_bot, K, EVEN_K), INTERPRET)
            for i in tl.static_range(4):
                if i == 0:
                    w = w0
                elif i == 1:
                    w = w1
                elif i == 2:
                    w = w2
                else:
                    w = w3
                if jj == 1:
                    w = (w.to(tl.uint32, bitcast=True) >> 8).to(tl.int32, bitcast=True)
                c0, c1, c2, c3 = _mma(w, zl, zh, s16, ta[i], ba[i], tb[i], bb[i], c0, c1, c2, c3, INTERPRET)
    # C fragment of MMA v at lane (g, q): rows g (c0, c1) and g + 8 (c2, c3), columns
    # c8 = 2q (c0, c2) and 2q + 1 (c1, c3), i.e. block columns 32 h + 4 c8 + v.
    top = tl.join(tl.sum(c0, axis=0), tl.sum(c1, axis=0))  # the two row halves rh meet; [H, 8, 4, 4, 2]
    bot = tl.join(tl.sum(c2, axis=0), tl.sum(c3, axis=0))
    acc = tl.join(top, bot)  # [H, 8, 4, 4, 2 (c8 - 2q), 2 (row half)]
    hh = tl.arange(0, H)[:, None, None, None, None, None]
    gg = tl.arange(0, 8)[None, :, None, None, None, None]
    qq = tl.arange(0, 4)[None, None, :, None, None, None]
    vv = tl.arange(0, 4)[None, None, None, :, None, None]
    e = tl.arange(0, 2)[None, None, None, None, :, None]
    b = tl.arange(0, 2)[None, None, None, None, None, :]
    rows = gg + 8 * b
    cols = pid_n * BN + 32 * hh + 4 * (2 * qq + e) + vv
    store_points(acc, rows, cols, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, pid_n, splits, SPLIT_K,
                 HAS_BIAS)
