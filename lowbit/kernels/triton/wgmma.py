"""int4 and NF4/FP4 matmul for 8..512 activation rows on Hopper's warpgroup MMA (Gluon).

The tensor cores do the multiply and the decode must stay off shared memory. wgmma takes
its left operand from registers: the weights are decoded straight into that operand, and x
streams through shared memory (TMA, a ring of STAGES stages of CODES steps) as the right
one. A program computes the transposed tile y^T [BNW, BM] = W [BNW, K] @ x^T [K, BM] (BNW
weight columns on the MMA's m side, BM = 16..256 activation rows on its n side). At few rows
the weight stream sets the time (and the MMA is small); at many rows the MMA does.

A step is one code position j of one chunk c. Code j of word row r holds kernel-order
column c*256 + 32 j + r (``layout``), so a step's x tile is the contiguous x[:, 32 i : 32 i
+ 32] (i = 8 c + j, the step's index) and the MMA's k slot r is word row r: the chunk's
words as a [BNW, 32] tensor in the left operand's own register layout decode element-wise
into that operand, with no shuffle. A chunk's words (and its groups' scales and zeros) are
loaded a chunk ahead and serve its 8 steps; each step's MMA runs while the next steps
are decoded (MMAS in flight; their operand registers are kept alive through the waits).
Where a program has one chunk (ONE_CHUNK: K split as many ways as it has chunks), its 8
code positions are decoded before the PDL wait instead, and their 8 MMAs run at once after it.

Decode as in ``gemm_tc``: ``code | 0x6400`` is the fp16 1024 + code, minus 1024 + zero gives
q - zero exactly, times the scale in fp16 (one rounding, as the reference's weight); bf16
activations: the product in float32, rounded to bf16. Groups of 128 or more (a step lies in
one group), no act-order (TMA reads x in order), K a multiple of 8 (TMA row pitch).

Code books (LUT: NF4/FP4, blocks of 64 or more): each code becomes lut[code] by a warp
shuffle from a 32-entry lane table, as in ``half2.dot4_lut`` (two shifts, two shuffles and
a PRMT per f16x2 operand register, straight from the words: no pairing step), times the
absmax of its block, loaded per quarter chunk (64 columns: two steps).

Grid: (row tiles of BM, column tiles of BNW, K splits): the row tiles of one weight tile run
side by side, so the weights come from DRAM once and from L2 after; split-K partial sums
meet as in ``epilogue``, but four sums a vector atomic (N % 4 == 0) and read back with plain
gpu-scope loads. Or (``CLUSTER`` > 1) the K splits of a tile are one thread-block cluster, in
(row tiles x CLUSTER, column tiles, 1), and meet in its shared memory (``cluster``).
"""
from __future__ import annotations

import torch

try:  # Gluon: Triton >= 3.5, with the API of 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import constexpr_function

    from . import cluster
    from .mma16 import cta_barrier
    from .pdl import gluon_release, gluon_wait

    # The TMA load is tma.async_copy_global_to_shared in Triton 3.6, tma.async_load later.
    _tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: large M runs dequantize + cuBLAS
    AVAILABLE = False

#: x columns of one step (the word rows of a chunk).
STEP_K = 32


def x_descriptor(x: torch.Tensor, bm: int, codes: int) -> "TensorDescriptor":
    """TMA descriptor of x [M, K] (fp16/bf16, K-contiguous) in [bm, 32 * min(codes, 2)] boxes."""
    dt = gl.float16 if x.dtype == torch.float16 else gl.bfloat16
    block = [bm, STEP_K * min(codes, 2)]  # rows of at most 128 bytes (the swizzle span)
    return TensorDescriptor.from_tensor(x, block, gl.NVMMASharedLayout.get_default_for(block, dt))


def cluster_fits(bnw: int, codes: int, stages: int) -> bool:
    """Whether a program's float32 [bnw, bm] tile fits where its x ring ([stages, bm, codes *
    32] fp16/bf16) was: the split-K meeting in a cluster reuses that shared memory."""
    return bnw * 4 <= stages * codes * STEP_K * 2


if AVAILABLE:

    @gluon.jit
    def _groups(s_ptr, z_ptr, c, n2, nmask, N, G, GS: gl.constexpr, HAS_ZERO: gl.constexpr):
        """Chunk c's scales and 1024 + zero, [BNW, 1] each, for its low (codes 0-3) and high
        (codes 4-7) halves; 128 columns each, so each half lies in one group."""
        g_lo = gl.minimum((c * 256) // GS, G - 1)
        g_hi = gl.minimum((c * 256 + 128) // GS, G - 1)
        s_lo = gl.load(s_ptr + g_lo * N + n2, mask=nmask, other=0.0)
        s_hi = gl.load(s_ptr + g_hi * N + n2, mask=nmask, other=0.0)
        if HAS_ZERO:
            z_lo = gl.load(z_ptr + g_lo * N + n2, mask=nmask, other=0.0) + 1024.0
            z_hi = gl.load(z_ptr + g_hi * N + n2, mask=nmask, other=0.0) + 1024.0
        else:
            z_lo = gl.full(n2.shape, 1032.0, gl.float16, layout=n2.type.layout)  # 1024 + zero point 8
            z_hi = z_lo
        return s_lo, z_lo, s_hi, z_hi

    @constexpr_function
    def _red_threads(bnw, vec):
        """A warp's threads over [bnw, rows] in groups of ``vec`` columns (no column twice)."""
        along = min(32, bnw // vec)
        return [along, 32 // along]

    @constexpr_function
    def _decode_asm(j, x16):
        """PTX for code position j of a pair from ``_pair``: code | 0x6400 in each half, the
        fp16 1024 + code. x16 (the pair from ``_shift8`` for j % 4 >= 2): the nibble is
        masked where it lies, so odd j give (code << 4) | 0x6400, the fp16 1024 + 16 code, and
        no position needs a shift of its own."""
        src = '$1' if j < 4 else '$2'
        if x16:
            return f"lop3.b32 $0, {src}, {'0x00f000f0' if j % 2 else '0x000f000f'}, 0x64006400, 0xea;"
        return (f"{{ .reg .b32 t; shr.b32 t, {src}, {4 * (j % 4)}; "
                "lop3.b32 $0, t, 0x000f000f, 0x64006400, 0xea; }")

    @gluon.jit
    def _pair(words):
        """Words of k slots 2t, 2t + 1 (one register pair of the operand layout) -> their
        codes 0-3 side by side in the first (a's in the low half, b's in the high half), codes
        4-7 in the second: then one shift and one LOP3 give a code position's f16x2."""
        return gl.inline_asm_elementwise("prmt.b32 $0, $2, $3, 0x5410; prmt.b32 $1, $2, $3, 0x7632;",
                                         "=r,=r,r,r", [words], dtype=gl.int32, is_pure=True, pack=2)

    @gluon.jit
    def _shift8(pairs):
        """The pairs' codes 2-3 (6-7) moved down a byte, where codes 0-1 (4-5) lie."""
        return gl.inline_asm_elementwise("shr.b32 $0, $1, 8;", "=r,r", [pairs], dtype=gl.int32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def _decode(pairs, j: gl.constexpr, s, zz, dt: gl.constexpr, HALF_MATH: gl.constexpr, X16: gl.constexpr):
        """Code j of every word -> the weight, in x's dtype (the MMA's left operand); X16 and
        odd j: 16 times the weight (``zz``: 1024 + 16 zero), exact, as a power of two scales
        it (its accumulator is scaled back)."""
        v = gl.inline_asm_elementwise(_decode_asm(j, X16), "=r,r,r", [pairs], dtype=gl.float16, is_pure=True,
                                      pack=2)
        w = v - zz.to(gl.float16)  # q - zero, exact
        if HALF_MATH:
            return w * s
        else:
            return (w.to(gl.float32) * s.to(gl.float32)).to(dt)

    @gluon.jit
    def _chunk_pairs(words, z_lo, z_hi, X16: gl.constexpr):
        """A chunk's words -> what ``_code`` takes of them: (pairs, pairs8, z16_lo, z16_hi); without
        X16 the last three are stand-ins (pairs, z_lo, z_hi) that it does not read."""
        pairs = _pair(words)
        if X16:  # 1024 + 16 zero, for the odd positions' 1024 + 16 code
            return pairs, _shift8(pairs), z_lo * 16.0 - 15360.0, z_hi * 16.0 - 15360.0
        else:
            return pairs, pairs, z_lo, z_hi

    @gluon.jit
    def _code(pairs, pairs8, j: gl.constexpr, s_lo, z_lo, z16_lo, s_hi, z_hi, z16_hi, dt: gl.constexpr,
              HALF_MATH: gl.constexpr, X16: gl.constexpr):
        """Code position j (0-7) of a chunk's words as the MMA's left operand, from ``_pair``
        (``pairs``), ``_shift8`` (``pairs8``, X16 only) and the chunk's halves' scales and 1024 +
        zero (``z16_*``: 1024 + 16 zero, X16 only)."""
        if X16:  # odd positions: 16 times the weight, into the odd accumulators
            return _decode(pairs if j % 4 < 2 else pairs8, j, s_lo if j < 4 else s_hi,
                           ((z_lo, z16_lo) if j < 4 else (z_hi, z16_hi))[j % 2], dt, HALF_MATH, X16)
        else:
            return _decode(pairs, j, s_lo if j < 4 else s_hi, z_lo if j < 4 else z_hi, dt, HALF_MATH, X16)

    @gluon.jit
    def _x_step(x_smem, st, jj: gl.constexpr, BOXES: gl.constexpr, BOX: gl.constexpr):
        """Step jj of stage slot st: x^T [32, BM] for the MMA's right operand (a view)."""
        return x_smem.index(st * BOXES + jj * 32 // BOX).slice((jj * 32) % BOX, 32, dim=1).permute((1, 0))

    #: Pin for ``_pin_before_wait``: the same f16x2 register of 8 operands ($2-$9) xor-ed, and 4
    #: of it added to the weights' address ($10, $11: a pair's two elements), volatile-loaded.
    _PIN8 = gl.constexpr("{ .reg .b32 a, b; .reg .b64 o; xor.b32 a, $2, $3; xor.b32 b, $4, $5; xor.b32 a, a, $6; "
                         "xor.b32 b, b, $7; xor.b32 a, a, $8; xor.b32 b, b, $9; xor.b32 a, a, b; and.b32 a, a, 4; "
                         "cvt.u64.u32 o, a; add.s64 o, o, $10; ld.volatile.global.b32 $0, [o]; mov.b32 $1, $0; }")

    @gluon.jit
    def _pin_before_wait(a0, a1, a2, a3, a4, a5, a6, a7, base):
        """Keep the decode of operands a0-a7 ahead of the PDL wait: ptxas moves the wait above
        arithmetic it does not depend on, but not above a load (here of one of the weights'
        first two int32, ``base`` [BNW, 32] int64, at an address that depends on every
        operand register), as ``half2.pin_before_wait``."""
        gl.inline_asm_elementwise(_PIN8, "=r,=r,r,r,r,r,r,r,r,r,l,l", [a0, a1, a2, a3, a4, a5, a6, a7, base],
                                  dtype=gl.int32, is_pure=False, pack=2)

    @gluon.jit
    def _into(a, xt, t: gl.constexpr, acc, acc1, acc2, acc3, ACCS: gl.constexpr):
        """Issue step t's MMA (a @ xt, async) into accumulator t % ACCS; the four accumulators."""
        if t % ACCS == 0:
            acc = warpgroup_mma(a, xt, acc, is_async=True)
        elif t % ACCS == 1:
            acc1 = warpgroup_mma(a, xt, acc1, is_async=True)
        elif t % ACCS == 2:
            acc2 = warpgroup_mma(a, xt, acc2, is_async=True)
        else:
            acc3 = warpgroup_mma(a, xt, acc3, is_async=True)
        return acc, acc1, acc2, acc3

    @gluon.jit
    def _one_chunk_mmas(x_smem, a0, a1, a2, a3, a4, a5, a6, a7, acc, acc1, acc2, acc3, ACCS: gl.constexpr,
                        BOXES: gl.constexpr, BOX: gl.constexpr):
        """The 8 steps' MMAs of a chunk decoded ahead (operands a0-a7, x in stage slot 0), step t
        into accumulator t % ACCS, all in flight at once; returns the accumulators when done."""
        acc, acc1, acc2, acc3 = _into(a0, _x_step(x_smem, 0, 0, BOXES, BOX), 0, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a1, _x_step(x_smem, 0, 1, BOXES, BOX), 1, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a2, _x_step(x_smem, 0, 2, BOXES, BOX), 2, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a3, _x_step(x_smem, 0, 3, BOXES, BOX), 3, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a4, _x_step(x_smem, 0, 4, BOXES, BOX), 4, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a5, _x_step(x_smem, 0, 5, BOXES, BOX), 5, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a6, _x_step(x_smem, 0, 6, BOXES, BOX), 6, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3 = _into(a7, _x_step(x_smem, 0, 7, BOXES, BOX), 7, acc, acc1, acc2, acc3, ACCS)
        acc, acc1, acc2, acc3, a0, a1, a2, a3, a4, a5, a6, a7 = warpgroup_mma_wait(
            num_outstanding=0, deps=(acc, acc1, acc2, acc3, a0, a1, a2, a3, a4, a5, a6, a7))
        return acc, acc1, acc2, acc3

    @gluon.jit
    def _quarters(s_ptr, c, n2, nmask, N, G, GS: gl.constexpr):
        """Chunk c's scales (a code book's absmax) for its four quarters of 64 columns (steps
        2q, 2q + 1), [BNW, 1] each."""
        s0 = gl.load(s_ptr + gl.minimum((c * 256) // GS, G - 1) * N + n2, mask=nmask, other=0.0)
        s1 = gl.load(s_ptr + gl.minimum((c * 256 + 64) // GS, G - 1) * N + n2, mask=nmask, other=0.0)
        s2 = gl.load(s_ptr + gl.minimum((c * 256 + 128) // GS, G - 1) * N + n2, mask=nmask, other=0.0)
        s3 = gl.load(s_ptr + gl.minimum((c * 256 + 192) // GS, G - 1) * N + n2, mask=nmask, other=0.0)
        return s0, s1, s2, s3

    @constexpr_function
    def _lut_asm(j):
        """PTX for code position j of two words (adjacent k slots, $1 and $2) -> the f16x2
        (lut[code of $1], lut[code of $2]); $3: the lane table's address (see half2)."""
        return ("{ .reg .b32 t, a, b, lo, hi, l; .reg .b64 o; mov.u32 l, %laneid; mul.wide.u32 o, l, 4; "
                f"add.s64 o, o, $3; ld.global.nc.b32 t, [o]; shr.b32 a, $1, {4 * j}; shr.b32 b, $2, {4 * j}; "
                "shfl.sync.idx.b32 lo, t, a, 0x1f, -1; shfl.sync.idx.b32 hi, t, b, 0x1f, -1; "
                "prmt.b32 $0, lo, hi, 0x7610; }")

    @gluon.jit
    def _decode_lut(words, lanes, j: gl.constexpr, s, dt: gl.constexpr, HALF_MATH: gl.constexpr):
        """Code j of every word -> lut[code] * absmax, in x's dtype (the MMA's left operand)."""
        v = gl.inline_asm_elementwise(_lut_asm(j), "=r,r,r,l,l", [words, lanes], dtype=gl.float16, is_pure=True,
                                      pack=2)
        if HALF_MATH:
            return v * s
        else:
            return (v.to(gl.float32) * s.to(gl.float32)).to(dt)

    #: Split-K: add four float32 sums at consecutive addresses ($4, 16-byte aligned) where the
    #: first's mask ($12) is set, in one vector atomic (sm_90).
    _RED4 = gl.constexpr("{ .reg .pred p; setp.ne.b32 p, $12, 0; "
                         "@p red.relaxed.gpu.global.add.v4.f32 [$4], {$8, $9, $10, $11}; "
                         "mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0; }")
    #: A gpu-scope relaxed load of a float32 ($1) where the mask ($2) is set, else 0.
    _LOAD_RELAXED = gl.constexpr("{ .reg .pred p; setp.ne.b32 p, $2, 0; mov.b32 $0, 0; "
                                 "@p ld.relaxed.gpu.global.f32 $0, [$1]; }")
    #: Split-K in half precision: round eight float32 sums ($16-$23) to fp16 and add them at
    #: eight consecutive fp16 addresses ($8, 16-byte aligned) where the first's mask ($24) is
    #: set, in one vector atomic (sm_90). cvt.f16x2 puts its first operand in the high half.
    _RED8 = gl.constexpr("{ .reg .pred p; .reg .b32 h0, h1, h2, h3; setp.ne.b32 p, $24, 0; "
                         "cvt.rn.f16x2.f32 h0, $17, $16; cvt.rn.f16x2.f32 h1, $19, $18; "
                         "cvt.rn.f16x2.f32 h2, $21, $20; cvt.rn.f16x2.f32 h3, $23, $22; "
                         "@p red.relaxed.gpu.global.add.noftz.v4.f16x2 [$8], {h0, h1, h2, h3}; "
                         "mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0; "
                         "mov.b32 $4, 0; mov.b32 $5, 0; mov.b32 $6, 0; mov.b32 $7, 0; }")
    #: Gpu-scope relaxed loads of eight fp16 sums at $8 (16-byte aligned) as float32, where the
    #: mask ($16) is set, else 0.
    _LOAD8_RELAXED = gl.constexpr("{ .reg .pred p; .reg .b32 w0, w1, w2, w3; .reg .b16 l, h; setp.ne.b32 p, $16, 0; "
                                  "mov.b32 w0, 0; mov.b32 w1, 0; mov.b32 w2, 0; mov.b32 w3, 0; "
                                  "@p ld.relaxed.gpu.global.v4.b32 {w0, w1, w2, w3}, [$8]; "
                                  "mov.b32 {l, h}, w0; cvt.f32.f16 $0, l; cvt.f32.f16 $1, h; "
                                  "mov.b32 {l, h}, w1; cvt.f32.f16 $2, l; cvt.f32.f16 $3, h; "
                                  "mov.b32 {l, h}, w2; cvt.f32.f16 $4, l; cvt.f32.f16 $5, h; "
                                  "mov.b32 {l, h}, w3; cvt.f32.f16 $6, l; cvt.f32.f16 $7, h; }")

    @gluon.jit
    def _mma(a, xt, acc, a_p1, a_p2, a_p3, MMAS: gl.constexpr):
        """Issue acc += a @ xt, then wait until at most MMAS MMAs are in flight, so the one
        issued MMAS steps ago has read its operand (a_pMMAS), and shift ``a`` into the
        operands still in flight (a_p1: the newest)."""
        acc = warpgroup_mma(a, xt, acc, is_async=True)
        if MMAS == 1:
            acc, a_p1 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_p1))
            return acc, a, a_p2, a_p3
        elif MMAS == 2:
            acc, a_p2 = warpgroup_mma_wait(num_outstanding=2, deps=(acc, a_p2))
            return acc, a, a_p1, a_p3
        else:
            acc, a_p3 = warpgroup_mma_wait(num_outstanding=3, deps=(acc, a_p3))
            return acc, a, a_p1, a_p2

    @gluon.jit
    def _write(out, rows, cols, mask, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS: gl.constexpr):
        if HAS_BIAS:
            out += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
        gl.store(y_ptr + rows.to(gl.int64) * stride_ym + cols, out.to(y_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _load_x(x_desc, x_smem, ready, i, st, row0, pred, WIDTH: gl.constexpr, BOX: gl.constexpr,
                BOXES: gl.constexpr):
        """Start the TMA copies of stage i's x columns [i * WIDTH, (i + 1) * WIDTH) into slot st."""
        mbarrier.expect(ready.index(st), BOXES * x_desc.block_type.nbytes, pred=pred)
        for b in gl.static_range(BOXES):
            _tma_load(x_desc, [row0, i * WIDTH + b * BOX], ready.index(st), x_smem.index(st * BOXES + b), pred=pred)

    @gluon.jit
    def int4_wgmma_kernel(
        x_desc, qw_ptr, s_ptr, z_ptr, lanes_ptr, bias_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, KC, G, stride_ym,
        chunks_per_split, splits,
        BN: gl.constexpr, BNW: gl.constexpr, BM: gl.constexpr, GS: gl.constexpr, STAGES: gl.constexpr,
        CODES: gl.constexpr, MMAS: gl.constexpr, ACCS: gl.constexpr, X16: gl.constexpr, SPLIT_K: gl.constexpr,
        PDL: gl.constexpr, HAS_ZERO: gl.constexpr, HAS_BIAS: gl.constexpr, HALF_MATH: gl.constexpr,
        LUT: gl.constexpr, RED: gl.constexpr, CLUSTER: gl.constexpr, MEET_ASYNC: gl.constexpr,
        ONE_CHUNK: gl.constexpr, num_warps: gl.constexpr,
    ):
        PK: gl.constexpr = 32
        dt: gl.constexpr = x_desc.dtype
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BM, 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
        gluon_release(PDL)
        pid_n = gl.program_id(1)
        if CLUSTER > 1:  # the K splits of a tile are the CTAs of one cluster (``cluster``)
            row0 = (gl.program_id(0) // CLUSTER) * BM
            split_id = cluster.rank()
        else:
            row0 = gl.program_id(0) * BM
            split_id = gl.program_id(2)
        c_begin = split_id * chunks_per_split
        c_end = gl.minimum(c_begin + chunks_per_split, KC)

        n2 = gl.expand_dims(pid_n * BNW + gl.arange(0, BNW, layout=gl.SliceLayout(1, a_l)), 1)  # [BNW, 1]
        r2 = gl.expand_dims(gl.arange(0, PK, layout=gl.SliceLayout(0, a_l)), 0)  # [1, PK]
        nmask = n2 < N
        w_ptrs = qw_ptr + (n2 // BN).to(gl.int64) * (KC * PK * BN) + r2 * BN + n2 % BN  # [BNW, PK]
        wmask = nmask & (r2 < PK)
        if LUT:  # the lane table's address, one int64 an element (operand of the decode's asm)
            lanes = gl.full([BNW, PK], 0, gl.int64, layout=a_l) + lanes_ptr.to(gl.int64)

        # A stage is CODES steps of x, [BM, CODES * 32]: BOXES TMA copies of [BM, BOX] (a box
        # row is at most the 128-byte swizzle span) and one barrier.
        BOX: gl.constexpr = x_desc.block_type.shape[1]
        BOXES: gl.constexpr = CODES * PK // BOX
        x_smem = gl.allocate_shared_memory(dt, [STAGES * BOXES, BM, BOX], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for b in gl.static_range(STAGES):
            mbarrier.init(ready.index(b), count=1)
        if CLUSTER > 1 and MEET_ASYNC:
            cluster.arm(BNW, BM, num_warps)
        PER: gl.constexpr = 8 // CODES  # stages a chunk
        loads = (c_end - c_begin) * PER
        i0 = c_begin * PER  # stage i of this program reads x columns [(i0 + i) * CODES * 32, ...)

        # ACCS accumulators: consecutive steps' MMAs are independent, so the MMAs in flight
        # overlap in the tensor cores (with few rows an MMA is short and its latency, not its
        # work, would set the pace of a chain into one accumulator).
        gl.static_assert(ACCS == 1 or ACCS == 2 or ACCS == 4)
        acc = gl.zeros([BNW, BM], gl.float32, layout=acc_l)
        acc1 = acc
        acc2 = acc
        acc3 = acc
        # The operands of the MMAs still in flight (their registers must not be reused).
        a_p1 = gl.zeros([BNW, PK], dt, layout=a_l)
        a_p2 = a_p1
        a_p3 = a_p1
        # The next chunk's words, scales and zeros are in flight while a chunk's MMAs run (two
        # chunks ahead measured no faster at M = 16, run 21).
        wn = gl.load(w_ptrs + c_begin * (PK * BN), mask=wmask & (c_begin < c_end), other=0)  # (a cluster's
        # last splits may be empty)
        if LUT:
            sn0, sn1, sn2, sn3 = _quarters(s_ptr, c_begin, n2, nmask, N, G, GS)
        else:
            sn_lo, zn_lo, sn_hi, zn_hi = _groups(s_ptr, z_ptr, c_begin, n2, nmask, N, G, GS, HAS_ZERO)
        # Under PDL the weights above load while the kernel ahead finishes; x (its output)
        # and the split-K workspace only after it has.
        if ONE_CHUNK:  # (a program has one chunk, int4, 8 codes a stage: ``launch.WgmmaConfig.predecode``)
            # all 8 operands decoded from the words before the wait, so that after it only x's
            # copy, the MMAs and the meeting remain (64 registers a thread hold them)
            gl.static_assert(CODES == 8 and not LUT)
            pairs, pairs8, z16_lo, z16_hi = _chunk_pairs(wn, zn_lo, zn_hi, X16)
            a0 = _code(pairs, pairs8, 0, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a1 = _code(pairs, pairs8, 1, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a2 = _code(pairs, pairs8, 2, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a3 = _code(pairs, pairs8, 3, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a4 = _code(pairs, pairs8, 4, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a5 = _code(pairs, pairs8, 5, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a6 = _code(pairs, pairs8, 6, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            a7 = _code(pairs, pairs8, 7, sn_lo, zn_lo, z16_lo, sn_hi, zn_hi, z16_hi, dt, HALF_MATH, X16)
            _pin_before_wait(a0, a1, a2, a3, a4, a5, a6, a7, gl.full([BNW, PK], 0, gl.int64, layout=a_l) +
                             qw_ptr.to(gl.int64))
            gluon_wait(PDL)
            _load_x(x_desc, x_smem, ready, i0, 0, row0, loads > 0, CODES * PK, BOX, BOXES)
            if loads > 0:  # (a cluster's last splits may be empty: no x comes)
                mbarrier.wait(ready.index(0), 0)
                acc, acc1, acc2, acc3 = _one_chunk_mmas(x_smem, a0, a1, a2, a3, a4, a5, a6, a7, acc, acc1, acc2,
                                                        acc3, ACCS, BOXES, BOX)
        else:
            gluon_wait(PDL)
            for b in gl.static_range(STAGES - 1):  # the first STAGES - 1 x tiles
                _load_x(x_desc, x_smem, ready, i0 + b, b, row0, b < loads, CODES * PK, BOX, BOXES)
            for c in range(c_begin, c_end):
                if LUT:
                    words = wn
                    s0, s1, s2, s3 = sn0, sn1, sn2, sn3
                    wn = gl.load(w_ptrs + (c + 1) * (PK * BN), mask=wmask & (c + 1 < c_end), other=0)
                    sn0, sn1, sn2, sn3 = _quarters(s_ptr, gl.minimum(c + 1, c_end - 1), n2, nmask, N, G, GS)
                else:
                    s_lo, z_lo, s_hi, z_hi = sn_lo, zn_lo, sn_hi, zn_hi
                    pairs, pairs8, z16_lo, z16_hi = _chunk_pairs(wn, z_lo, z_hi, X16)
                    wn = gl.load(w_ptrs + (c + 1) * (PK * BN), mask=wmask & (c + 1 < c_end), other=0)
                    sn_lo, zn_lo, sn_hi, zn_hi = _groups(s_ptr, z_ptr, gl.minimum(c + 1, c_end - 1), n2, nmask, N, G,
                                                         GS, HAS_ZERO)
                for u in gl.static_range(PER):
                    i = (c - c_begin) * PER + u
                    st = i % STAGES
                    mbarrier.wait(ready.index(st), (i // STAGES) & 1)
                    for jj in gl.static_range(CODES):
                        if LUT:  # times the absmax of the step's quarter chunk
                            a = _decode_lut(words, lanes, u * CODES + jj, (s0, s1, s2, s3)[(u * CODES + jj) // 2],
                                            dt, HALF_MATH)
                        else:
                            a = _code(pairs, pairs8, u * CODES + jj, s_lo, z_lo, z16_lo, s_hi, z_hi, z16_hi, dt,
                                      HALF_MATH, X16)
                        xt = _x_step(x_smem, st, jj, BOXES, BOX)
                        # Step t's MMA into accumulator t % ACCS, then retire the MMA issued MMAS
                        # steps ago (its operand registers are free).
                        if (u * CODES + jj) % ACCS == 0:
                            acc, a_p1, a_p2, a_p3 = _mma(a, xt, acc, a_p1, a_p2, a_p3, MMAS)
                        elif (u * CODES + jj) % ACCS == 1:
                            acc1, a_p1, a_p2, a_p3 = _mma(a, xt, acc1, a_p1, a_p2, a_p3, MMAS)
                        elif (u * CODES + jj) % ACCS == 2:
                            acc2, a_p1, a_p2, a_p3 = _mma(a, xt, acc2, a_p1, a_p2, a_p3, MMAS)
                        else:
                            acc3, a_p1, a_p2, a_p3 = _mma(a, xt, acc3, a_p1, a_p2, a_p3, MMAS)
                    # Every MMA of the previous stage has retired (MMAS <= CODES): refill its slot.
                    nxt = i + STAGES - 1
                    ps = nxt % STAGES
                    _load_x(x_desc, x_smem, ready, i0 + nxt, ps, row0, nxt < loads, CODES * PK, BOX, BOXES)
        acc, acc1, acc2, acc3, a_p1, a_p2, a_p3 = warpgroup_mma_wait(
            num_outstanding=0, deps=(acc, acc1, acc2, acc3, a_p1, a_p2, a_p3))
        if X16:  # the odd accumulators hold 16 times their sums (exact: a power of two)
            gl.static_assert(ACCS > 1)
            if ACCS > 2:
                acc += acc2 + (acc1 + acc3) * 0.0625
            else:
                acc += acc1 * 0.0625
        else:
            if ACCS > 1:
                acc += acc1
            if ACCS > 2:
                acc += acc2 + acc3
        for b in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(b))

        # acc [BNW, BM] is y^T: element (n, m) goes to y[row0 + m, n].
        cols = gl.expand_dims(pid_n * BNW + gl.arange(0, BNW, layout=gl.SliceLayout(1, acc_l)), 1)  # [BNW, 1]
        rows = gl.expand_dims(row0 + gl.arange(0, BM, layout=gl.SliceLayout(0, acc_l)), 0)  # [1, BM]
        mask = (rows < M) & (cols < N)
        if CLUSTER > 1:  # the splits meet in shared memory (``cluster``): CTA j sums and writes
            # the tile's weight columns [j R, (j + 1) R)
            R: gl.constexpr = BNW // CLUSTER
            sum_l: gl.constexpr = cluster.slice_layout(R, BM, num_warps)
            rr = gl.expand_dims(gl.arange(0, R, layout=gl.SliceLayout(1, sum_l)), 1)  # [R, 1]
            cc = gl.expand_dims(gl.arange(0, BM, layout=gl.SliceLayout(0, sum_l)), 0)  # [1, BM]
            if MEET_ASYNC:  # (each element of acc on one thread: the slots count every byte once)
                gl.static_assert(BNW % (16 * num_warps) == 0, "one accumulator row block a warp")
                cluster.deliver(acc, cols - pid_n * BNW, rows - row0, split_id, R, BM, CLUSTER, num_warps)
                total = cluster.collect_sum(rr, cc, R, BM, CLUSTER, num_warps)
            else:
                gl.static_assert(BNW * 4 <= STAGES * CODES * PK * 2, "the tile must fit where the x ring was")
                # Every CTA of the cluster is done with its x ring (its MMAs have read it:
                # nothing to publish, so no fence).
                cluster.sync(num_warps, False)
                cluster.scatter(acc, cols - pid_n * BNW, rows - row0, split_id, R, BM)
                cluster.sync(num_warps, True)
                total = cluster.gather_sum(rr, cc, R, BM, CLUSTER)
            cols = pid_n * BNW + split_id * R + rr
            rows = row0 + cc
            _write(total, rows, cols, (rows < M) & (cols < N), N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
        elif SPLIT_K:  # the protocol of ``epilogue.store_output``: float32 [M, N] sums, a ticket a tile
            # (RED = 8: fp16 sums, see ``launch.WgmmaConfig.half_sums``)
            tile = gl.program_id(0) * gl.num_programs(1) + pid_n
            if RED > 1:
                # RED adjacent columns a thread, one vector atomic for them: the atomics set
                # the cost of split-K here (benchmarks/splitk_cost.py), and this is RED x fewer.
                # (The float32 vector add flushes denormal sums, < 1.2e-38, to zero: far below
                # what an fp16 or bf16 output resolves next to the other sums.)
                red_l: gl.constexpr = gl.BlockedLayout(size_per_thread=[RED, 1], threads_per_warp=_red_threads(BNW, RED),
                                                       warps_per_cta=[1, num_warps], order=[0, 1])
                acc = gl.convert_layout(acc, red_l)
                cols = gl.expand_dims(pid_n * BNW + gl.arange(0, BNW, layout=gl.SliceLayout(1, red_l)), 1)
                rows = gl.expand_dims(row0 + gl.arange(0, BM, layout=gl.SliceLayout(0, red_l)), 0)
                mask = (rows < M) & (cols < N)  # whole groups of RED: N % RED == 0
                ws = ws_ptr + rows * N + cols
                if RED == 8:
                    gl.inline_asm_elementwise(_RED8, "=r,=r,=r,=r,=r,=r,=r,=r,l,l,l,l,l,l,l,l,f,f,f,f,f,f,f,f,"
                                              "r,r,r,r,r,r,r,r", [ws.to(gl.int64), acc, mask.to(gl.int32)],
                                              dtype=gl.int32, is_pure=False, pack=8)
                else:
                    gl.inline_asm_elementwise(_RED4, "=r,=r,=r,=r,l,l,l,l,f,f,f,f,r,r,r,r",
                                              [ws.to(gl.int64), acc, mask.to(gl.int32)], dtype=gl.int32,
                                              is_pure=False, pack=4)
            else:
                ws = ws_ptr + rows * N + cols
                gl.atomic_add(ws, acc, mask=mask, sem="relaxed")
            cta_barrier()  # every thread's sums issued before the ticket releases them
            ticket = gl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
            if ticket == splits - 1:
                # The ticket's acquire orders these after every split's sums: plain gpu-scope
                # loads then see them (acq_rel on each would fence each: 3x the kernel; an
                # atomic add of 0 per sum costs as much as the sums' atomics).
                if RED == 8:
                    total = gl.inline_asm_elementwise(_LOAD8_RELAXED, "=f,=f,=f,=f,=f,=f,=f,=f,l,l,l,l,l,l,l,l,"
                                                      "r,r,r,r,r,r,r,r", [ws.to(gl.int64), mask.to(gl.int32)],
                                                      dtype=gl.float32, is_pure=False, pack=8)
                else:
                    total = gl.inline_asm_elementwise(_LOAD_RELAXED, "=f,l,r", [ws.to(gl.int64), mask.to(gl.int32)],
                                                      dtype=gl.float32, is_pure=False, pack=1)
                _write(total, rows, cols, mask, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
                # Zeros and a zero ticket for the next call, relaxed (why: ``epilogue.store_output``).
                gl.store(ws, gl.zeros_like(acc).to(ws_ptr.dtype.element_ty), mask=mask)
                gl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed")
        else:
            _write(acc, rows, cols, mask, N, y_ptr, stride_ym, bias_ptr, HAS_BIAS)
