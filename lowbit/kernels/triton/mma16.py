"""int4 matmul for 2..32 activation rows on ``mma.sync``, weights decoded in f16x2 (Gluon).

At M <= 16 the weight stream still sets the time, so the decode must stay as cheap as in
``gemv_half2``, and the tensor cores do the multiply: two codes of a word decode into one
f16x2 register (codes j and j + 4: kernel-order columns k and k + 128 of its chunk), which
the m16n8k16 MMA takes directly as a B-fragment register. The MMA sums its 16 k slots in
any order, so each lane's slots are simply "its" columns: lane (g, q) = (lane / 4, lane % 4)
holds the words of chunk rows 16 rh + 4 q + i (i = 0..3) for slice columns 8V h + V g + v
(v < V = 1, 2 or 4: one load of V words), and MMA v takes B = (code pair jp, jp + 1) of its
word; the A fragment is x at the same k for rows g and g + 8 (four consecutive halves of x:
one 8-byte load, then PRMTs). Column c8 of MMA v is slice column 8V h + V c8 + v. The weight
layout is the one ``gemv_half2`` reads (``layout``): no second copy of the weight.

A loop step takes C consecutive chunks side by side (one stream in the layout), over a
slice of BNP of a layout block's BN columns; the warps split the step's chunks (WC), a
chunk's row halves (WR) and the column groups (WH), and the K range is summed across them
once at the end (as in ``gemv_half2``), so a program covers many chunks without split-K.

Per word (8 weights): a shift, 4 LOP3, 4 FMA (q - zero, exact), 4 MUL (times the scale, as
fp16 like the dequantized reference weight) and 2 MMAs. Both groups of a code pair are
scaled before the MMA, so the kernel takes group sizes >= 128 (one group pair a chunk).

Why Gluon: mma.sync is a warp-wide instruction whose operands must sit on specific lanes.
Plain Triton picks tensor layouts itself (and picked different ones in different releases),
so the word tensor [C, 2, H, 8, 4, V] (chunk, rh, h, g, q, v) is given an explicit layout
here: v in registers, q on lanes 0-1, g on lanes 2-4, the chunk, rh and h over warps and
registers. Gluon kernels do not run under TRITON_INTERPRET; the GPU tests check this one.

bf16 activations are rounded to fp16 as they are paired (as in ``gemv_half2``); the output
is written in x's dtype. More than 16 rows: one program row per 16 (the grid's third axis;
the programs of one column block share its weights through L2).

Grid: (column slices, K splits, row tiles of 16); split-K partial sums meet as in
``epilogue``.
"""
from __future__ import annotations

from .half2 import ASM_HIGH_TERM, ASM_PACK, ASM_PAIR_QUADS, ASM_PAIR_QUADS_BF16

try:  # Gluon: Triton >= 3.5, with the API of 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.runtime.jit import constexpr_function

    from .pdl import gluon_release, gluon_wait

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: M <= 16 runs the other kernels
    AVAILABLE = False

if AVAILABLE:
    # The CTA barrier is gl.thread_barrier in Triton 3.6, gl.barrier from 3.7 on.
    cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier

    _ASM_MMA = gl.constexpr(
        "{ .reg .b32 h0, h1, v0, v1, c16, c256; "
        "lop3.b32 h0, $4, 0x000f000f, 0x64006400, 0xea; lop3.b32 h1, $4, 0x00f000f0, 0x64006400, 0xea; "
        "mov.b32 c16, 0x2c002c00; mov.b32 c256, 0x1c001c00; "
        "fma.rn.f16x2 v0, h0, c16, $5; fma.rn.f16x2 v1, h1, c256, $6; "
        "mul.rn.f16x2 v0, v0, $7; mul.rn.f16x2 v1, v1, $7; "
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {$8, $9, $10, $11}, {v0, v1}, "
        "{$12, $13, $14, $15}; }"
    )

    @constexpr_function
    def _axis_layout(L, rank, dim):
        """The 1-D layout of axis ``dim`` of a rank-``rank`` layout L: L with every other axis
        sliced away, the highest first (so that ``_iota`` expands them back lowest first)."""
        for d in reversed(range(rank)):
            if d != dim:
                L = gl.SliceLayout(d, L)
        return L

    @gluon.jit
    def _iota(n: gl.constexpr, DIM: gl.constexpr, RANK: gl.constexpr, L: gl.constexpr):
        """arange(n) along axis DIM of a rank-RANK layout L, size 1 on the other axes."""
        r = gl.arange(0, n, layout=_axis_layout(L, RANK, DIM))
        for d in gl.static_range(RANK):
            if d != DIM:
                r = gl.expand_dims(r, d)
        return r

    @gluon.jit
    def _pack(lo, hi):
        """Two fp16 tensors -> f16x2 (int32), ``lo`` in the low half."""
        return gl.inline_asm_elementwise(ASM_PACK, "=r,h,h", [lo, hi], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.jit
    def _pair_quads(a, b, X_BF16: gl.constexpr):
        """Two int64 tensors, four halves each -> four f16x2: (a's half i, b's half i); bf16
        halves are rounded to fp16 on the way (as in ``gemv_half2``)."""
        if X_BF16:
            return gl.inline_asm_elementwise(ASM_PAIR_QUADS_BF16, "=r,=r,=r,=r,l,l", [a, b],
                                             dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
        else:
            return gl.inline_asm_elementwise(ASM_PAIR_QUADS, "=r,=r,=r,=r,l,l", [a, b],
                                             dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)

    @gluon.jit
    def _x_raw(x_top, x_bot, c, c_last, cc, jj: gl.constexpr, rh, q, m_top, m_bot, K, EVEN_K: gl.constexpr):
        """The activations code position pair jj of the step from chunk c needs, as int64 (four
        halves each) at kernel-order columns kk, kk + 128 (pair a) and kk + 32, kk + 160 (pair
        b), kk = chunk * 256 + 64 jj + 16 rh + 4 q, chunk = min(c + cc, c_last), for rows g
        (top) and g + 8 (bottom). A chunk past the last reloads the last one: its weights are
        zero, so it adds nothing, and the reload keeps the loads in bounds."""
        kk = gl.minimum(c + cc, c_last) * 256 + 64 * jj + 16 * rh + 4 * q  # [C, 2, 1, 1, 4, 1]
        w = kk // 4
        if EVEN_K:
            ta0 = gl.load(x_top + w, mask=m_top, other=0)
            ta1 = gl.load(x_top + w + 32, mask=m_top, other=0)
            tb0 = gl.load(x_top + w + 8, mask=m_top, other=0)
            tb1 = gl.load(x_top + w + 40, mask=m_top, other=0)
            ba0 = gl.load(x_bot + w, mask=m_bot, other=0)
            ba1 = gl.load(x_bot + w + 32, mask=m_bot, other=0)
            bb0 = gl.load(x_bot + w + 8, mask=m_bot, other=0)
            bb1 = gl.load(x_bot + w + 40, mask=m_bot, other=0)
        else:
            ta0 = gl.load(x_top + w, mask=m_top & (kk < K), other=0)
            ta1 = gl.load(x_top + w + 32, mask=m_top & (kk + 128 < K), other=0)
            tb0 = gl.load(x_top + w + 8, mask=m_top & (kk + 32 < K), other=0)
            tb1 = gl.load(x_top + w + 40, mask=m_top & (kk + 160 < K), other=0)
            ba0 = gl.load(x_bot + w, mask=m_bot & (kk < K), other=0)
            ba1 = gl.load(x_bot + w + 32, mask=m_bot & (kk + 128 < K), other=0)
            bb0 = gl.load(x_bot + w + 8, mask=m_bot & (kk + 32 < K), other=0)
            bb1 = gl.load(x_bot + w + 40, mask=m_bot & (kk + 160 < K), other=0)
        return ta0, ta1, tb0, tb1, ba0, ba1, bb0, bb1

    @gluon.jit
    def _mma(src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3):
        """One m16n8k16 MMA per element of src (the word tensor): C += A x B, B decoded from
        the low (pair jp) and high (pair jp + 1) code positions of src."""
        return gl.inline_asm_elementwise(
            _ASM_MMA, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f", [src, zl, zh, s16, a0, a1, a2, a3, c0, c1, c2, c3],
            dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)

    @gluon.jit
    def _chunk(w_base, s_ptr, zp_ptr, c, c_end, cc, n, nmask, N, G, PK: gl.constexpr, BN: gl.constexpr,
               GS: gl.constexpr, HAS_ZERO: gl.constexpr, L: gl.constexpr):
        """The step from chunk c: its chunks c + cc side by side (axis 0), as four word
        tensors (rows 16 rh + 4 q + i in tensor i), their f16x2 scales (16 s of the low and
        the high group) and zero terms; zeros for chunks from c_end on."""
        ci = c + cc  # [C, 1, 1, 1, 1, 1]
        p = w_base + ci * (PK * BN)
        live = ci < c_end
        w0 = gl.load(p, mask=live, other=0)
        w1 = gl.load(p + BN, mask=live, other=0)
        w2 = gl.load(p + 2 * BN, mask=live, other=0)
        w3 = gl.load(p + 3 * BN, mask=live, other=0)
        cmask = nmask & live
        HI: gl.constexpr = 1 if GS == 128 else 0
        g_lo = gl.minimum((ci * 256) // GS, G - 1)
        g_hi = gl.minimum(g_lo + HI, G - 1)
        s_lo = gl.load(s_ptr + g_lo * N + n, mask=cmask, other=0.0).to(gl.float32) * 16.0
        s_hi = gl.load(s_ptr + g_hi * N + n, mask=cmask, other=0.0).to(gl.float32) * 16.0
        s16 = _pack(s_lo.to(gl.float16), s_hi.to(gl.float16))  # the pairs carry (q - zero) / 16
        if HAS_ZERO:
            zl = gl.load(zp_ptr + ci * N + n, mask=cmask, other=0)
        else:
            half = gl.full((ci + n).shape, -64.5, gl.float16, layout=L)  # zero point 8: -(64 + 8 / 16)
            zl = _pack(half, half)
        return w0, w1, w2, w3, s16, zl

    @gluon.jit
    def _write(out, rows, cols, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS: gl.constexpr):
        if HAS_BIAS:
            out += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
        mask = (rows < M) & (cols < N)
        gl.store(y_ptr + rows * stride_ym + cols, out.to(y_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _store4(c0, c1, c2, c3, r_top, col_e0, col_e1, M, N, y_ptr, stride_ym, bias_ptr, ws_ptr, cnt_ptr, tile,
                splits, SPLIT_K: gl.constexpr, HAS_BIAS: gl.constexpr):
        """The four C registers (rows r_top / r_top + 8, columns col_e0 / col_e1) -> y, through
        the split-K workspace protocol of ``epilogue.store_output``."""
        r_bot = r_top + 8
        if not SPLIT_K:
            _write(c0, r_top, col_e0, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
            _write(c1, r_top, col_e1, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
            _write(c2, r_bot, col_e0, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
            _write(c3, r_bot, col_e1, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
        else:
            m00 = (r_top < M) & (col_e0 < N)
            m01 = (r_top < M) & (col_e1 < N)
            m10 = (r_bot < M) & (col_e0 < N)
            m11 = (r_bot < M) & (col_e1 < N)
            w00 = ws_ptr + r_top * N + col_e0
            w01 = ws_ptr + r_top * N + col_e1
            w10 = ws_ptr + r_bot * N + col_e0
            w11 = ws_ptr + r_bot * N + col_e1
            gl.atomic_add(w00, c0, mask=m00, sem="relaxed")
            gl.atomic_add(w01, c1, mask=m01, sem="relaxed")
            gl.atomic_add(w10, c2, mask=m10, sem="relaxed")
            gl.atomic_add(w11, c3, mask=m11, sem="relaxed")
            cta_barrier()  # every thread's sums issued before the ticket releases them
            ticket = gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
            if ticket == splits - 1:
                zero = gl.zeros_like(c0)
                t00 = gl.where(m00, gl.atomic_add(w00, zero, mask=m00, sem="relaxed"), 0.0)
                t01 = gl.where(m01, gl.atomic_add(w01, zero, mask=m01, sem="relaxed"), 0.0)
                t10 = gl.where(m10, gl.atomic_add(w10, zero, mask=m10, sem="relaxed"), 0.0)
                t11 = gl.where(m11, gl.atomic_add(w11, zero, mask=m11, sem="relaxed"), 0.0)
                _write(t00, r_top, col_e0, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
                _write(t01, r_top, col_e1, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
                _write(t10, r_bot, col_e0, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
                _write(t11, r_bot, col_e1, M, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
                # Zeros and a zero ticket for the next call, relaxed (why: ``epilogue.store_output``).
                gl.store(w00, zero, mask=m00)
                gl.store(w01, zero, mask=m01)
                gl.store(w10, zero, mask=m10)
                gl.store(w11, zero, mask=m11)
                gl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed")

    @gluon.jit
    def _ksum(acc):
        """[C, 2, H, 8, 4, V] -> [H, 8, 4, V]: the sum over a program's chunks and halves."""
        return gl.sum(gl.sum(acc, axis=0), axis=0)

    @gluon.jit
    def int4_mma16_kernel(
        x_ptr, qw_ptr, s_ptr, zp_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr,
        M, N, K, KC, G, stride_xm, stride_ym, chunks_per_split, splits,
        BN: gl.constexpr, BNP: gl.constexpr, C: gl.constexpr, V: gl.constexpr, PK: gl.constexpr, GS: gl.constexpr,
        SPLIT_K: gl.constexpr, EVEN_K: gl.constexpr, HAS_ZERO: gl.constexpr, HAS_BIAS: gl.constexpr,
        PDL: gl.constexpr, WC: gl.constexpr, WR: gl.constexpr, WH: gl.constexpr, DEPTH: gl.constexpr,
        X_BF16: gl.constexpr,
    ):
        # Lanes: q (bits 0-1), g (bits 2-4), as mma.sync wants; v in registers (one V-word
        # load); the C chunks of a step over WC warps, the two 16-row halves rh of a chunk over
        # WR warps, column groups h over WH warps. The K range is summed across the warps at
        # the end, so a program covers many chunks without a K split.
        H: gl.constexpr = BNP // (8 * V)
        L: gl.constexpr = gl.BlockedLayout(size_per_thread=[C // WC, 2 // WR, H // WH, 1, 1, V],
                                           threads_per_warp=[1, 1, 1, 8, 4, 1],
                                           warps_per_cta=[WC, WR, WH, 1, 1, 1], order=[5, 4, 3, 2, 1, 0])
        gluon_release(PDL)
        pid_n = gl.program_id(0)  # BNP columns of layout block pid_n // (BN // BNP)
        pid_k = gl.program_id(1)
        row0 = gl.program_id(2) * 16  # this program's 16 activation rows
        cc = _iota(C, 0, 6, L)
        rh = _iota(2, 1, 6, L)
        h = _iota(H, 2, 6, L)
        g = _iota(8, 3, 6, L)
        q = _iota(4, 4, 6, L)
        v = _iota(V, 5, 6, L)
        col = 8 * V * h + V * g + v  # [1, 1, H, 8, 1, V]: this lane's columns in the program's slice
        n = pid_n * BNP + col
        nmask = n < N
        PB: gl.constexpr = BN // BNP
        w_base = (qw_ptr + (pid_n // PB).to(gl.int64) * KC * (PK * BN) + (16 * rh + 4 * q) * BN
                  + (pid_n % PB) * BNP + col)  # [1, 2, H, 8, 4, V]
        x64 = x_ptr.to(gl.pointer_type(gl.int64))
        xrow = stride_xm // 4  # int64 words per x row
        x_top = x64 + (row0 + g) * xrow  # rows g ([1, 1, 1, 8, 1, 1]; the column comes with kk)
        x_bot = x_top + 8 * xrow  # rows g + 8
        m_top = row0 + g < M
        m_bot = row0 + g + 8 < M
        c_begin = pid_k * chunks_per_split
        c_end = gl.minimum(c_begin + chunks_per_split, KC)
        c_last = c_end - 1
        c0 = gl.zeros([C, 2, H, 8, 4, V], gl.float32, layout=L)
        c1 = c0
        c2 = c0
        c3 = c0
        # DEPTH steps ahead (1 or 2; n* the next step, nn* the one after): their words, scales
        # and zeros are in flight while this step's MMAs run (one program holds few warps,
        # so without it every step would wait out a memory round trip).
        n0, n1, n2, n3, ns, nz = _chunk(w_base, s_ptr, zp_ptr, c_begin, c_end, cc, n, nmask, N, G, PK, BN, GS,
                                        HAS_ZERO, L)
        if DEPTH >= 2:
            nn0, nn1, nn2, nn3, nns, nnz = _chunk(w_base, s_ptr, zp_ptr, c_begin + C, c_end, cc, n, nmask, N, G,
                                                  PK, BN, GS, HAS_ZERO, L)
        gluon_wait(PDL)
        xa0, xa1, xb0, xb1, xc0, xc1, xd0, xd1 = _x_raw(x_top, x_bot, c_begin, c_last, cc, 0, rh, q, m_top, m_bot,
                                                        K, EVEN_K)
        for c in range(c_begin, c_end, C):
            w0, w1, w2, w3, s16, zl = n0, n1, n2, n3, ns, nz
            if DEPTH >= 2:
                n0, n1, n2, n3, ns, nz = nn0, nn1, nn2, nn3, nns, nnz
                nn0, nn1, nn2, nn3, nns, nnz = _chunk(w_base, s_ptr, zp_ptr, c + 2 * C, c_end, cc, n, nmask, N, G,
                                                      PK, BN, GS, HAS_ZERO, L)
            else:
                n0, n1, n2, n3, ns, nz = _chunk(w_base, s_ptr, zp_ptr, c + C, c_end, cc, n, nmask, N, G, PK, BN,
                                                GS, HAS_ZERO, L)
            # + 60: the zero term of the high code position, -(4 + z / 16)
            zh = gl.inline_asm_elementwise(ASM_HIGH_TERM, "=r,r", [zl], dtype=gl.int32, is_pure=True, pack=1)
            for jj in gl.static_range(2):  # code pairs (0, 1) then (2, 3): 8 bits up
                # This step's activations were loaded a code pair ahead (from L2, mostly: each
                # program reads its own K range once); load the next ones now (past the last
                # step: a harmless reload). (A whole step ahead measured no faster, s10 run 2.)
                ta = _pair_quads(xa0, xa1, X_BF16)
                tb = _pair_quads(xb0, xb1, X_BF16)
                ba = _pair_quads(xc0, xc1, X_BF16)
                bb = _pair_quads(xd0, xd1, X_BF16)
                if jj == 0:
                    xa0, xa1, xb0, xb1, xc0, xc1, xd0, xd1 = _x_raw(x_top, x_bot, c, c_last, cc, 1, rh, q, m_top,
                                                                    m_bot, K, EVEN_K)
                else:
                    xa0, xa1, xb0, xb1, xc0, xc1, xd0, xd1 = _x_raw(x_top, x_bot, c + C, c_last, cc, 0, rh, q,
                                                                    m_top, m_bot, K, EVEN_K)
                for i in gl.static_range(4):
                    w = (w0, w1, w2, w3)[i]
                    if jj == 1:
                        w = (w.to(gl.uint32, bitcast=True) >> 8).to(gl.int32, bitcast=True)
                    c0, c1, c2, c3 = _mma(w, zl, zh, s16, ta[i], ba[i], tb[i], bb[i], c0, c1, c2, c3)
        # C of MMA v at lane (g, q): rows g (c0, c1) and g + 8 (c2, c3), columns c8 = 2q
        # (c0, c2) and 2q + 1 (c1, c3), i.e. slice columns 8V h + V c8 + v. The sums over
        # the step's chunks and the chunk's halves cross warps (through shared memory, once).
        # The index tensors go through the same reduction so that their layout is the sums'.
        S: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(0, L))
        rows = row0 + _iota(8, 1, 4, S)  # [1, 8, 1, 1]
        col_e0 = pid_n * BNP + 8 * V * _iota(H, 0, 4, S) + 2 * V * _iota(4, 2, 4, S) + _iota(V, 3, 4, S)  # [H, 1, 4, V]
        col_e1 = col_e0 + V
        _store4(_ksum(c0), _ksum(c1), _ksum(c2), _ksum(c3), rows, col_e0, col_e1, M, N, y_ptr, stride_ym,
                bias_ptr, ws_ptr, cnt_ptr, gl.program_id(2) * gl.num_programs(0) + pid_n, splits, SPLIT_K, HAS_BIAS)
