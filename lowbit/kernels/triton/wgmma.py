"""int4 GEMM for many activation rows (prefill) on Hopper's warpgroup MMA (Gluon).

From M ~ 64 on the multiply, not the weight stream, sets the time, so the tensor cores must
be kept busy and the decode must not go through shared memory. wgmma takes its left operand
from registers: the weights are decoded straight into that operand, and x streams through
shared memory (TMA, a ring of STAGES tiles) as the right one. A program computes the
transposed tile y^T [BNW, BM] = W [BNW, K] @ x^T [K, BM] (BNW weight columns on the MMA's
m side, BM activation rows on its n side: up to 256 rows a program).

A step is one code position j of one chunk c. Code j of word row r holds kernel-order
column c*256 + 32 j + r (``layout``), so a step's x tile is the contiguous x[:, 32 i : 32 i
+ 32] (i = 8 c + j, the step's index) and the MMA's k slot r is word row r: the chunk's
words as a [BNW, 32] tensor in the left operand's own register layout decode element-wise
into that operand, with no shuffle. A chunk's words (and its groups' scales and zeros) are
loaded a chunk ahead and serve its 8 steps; each step's MMA runs while the next step is
decoded (one MMA in flight; its operand registers are kept alive through the wait).

Decode as in ``gemm_tc``: ``code | 0x6400`` is the fp16 1024 + code, minus 1024 + zero gives
q - zero exactly, times the scale in fp16 (one rounding, as the reference's weight); bf16
activations: the product in float32, rounded to bf16. Groups of 128 or more (a step lies in
one group), no act-order (TMA reads x in order), K a multiple of 8 (TMA row pitch).

Grid: (row tiles of BM, column tiles of BNW): the row tiles of one weight tile run side by
side, so the weights come from DRAM once and from L2 after.
"""
from __future__ import annotations

import torch

try:  # Gluon: Triton >= 3.5, with the API of 3.6
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: large M runs dequantize + cuBLAS
    AVAILABLE = False

#: x columns of one step (the word rows of a chunk).
STEP_K = 32


def x_descriptor(x: torch.Tensor, bm: int, codes: int) -> "TensorDescriptor":
    """TMA descriptor of x [M, K] (fp16/bf16, K-contiguous) in [bm, 32 * codes] tiles."""
    dt = gl.float16 if x.dtype == torch.float16 else gl.bfloat16
    block = [bm, STEP_K * codes]
    return TensorDescriptor.from_tensor(x, block, gl.NVMMASharedLayout.get_default_for(block, dt))


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

    @gluon.jit
    def _decode(words, j: gl.constexpr, s, zz, dt: gl.constexpr, HALF_MATH: gl.constexpr):
        """Code j of every word -> the weight, in x's dtype (the MMA's left operand)."""
        v = (((words >> (4 * j)) & 0xF) | 0x6400).to(gl.int16).to(gl.float16, bitcast=True)  # 1024 + q
        w = v - zz.to(gl.float16)  # q - zero, exact
        if HALF_MATH:
            return w * s
        else:
            return (w.to(gl.float32) * s.to(gl.float32)).to(dt)

    @gluon.jit
    def int4_wgmma_kernel(
        x_desc, qw_ptr, s_ptr, z_ptr, bias_ptr, y_ptr, M, N, KC, G, stride_ym,
        BN: gl.constexpr, BNW: gl.constexpr, BM: gl.constexpr, GS: gl.constexpr, STAGES: gl.constexpr,
        CODES: gl.constexpr,
        HAS_ZERO: gl.constexpr, HAS_BIAS: gl.constexpr, HALF_MATH: gl.constexpr, num_warps: gl.constexpr,
    ):
        PK: gl.constexpr = 32
        dt: gl.constexpr = x_desc.dtype
        acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BM, 16])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
        row0 = gl.program_id(0) * BM
        pid_n = gl.program_id(1)

        n2 = gl.expand_dims(pid_n * BNW + gl.arange(0, BNW, layout=gl.SliceLayout(1, a_l)), 1)  # [BNW, 1]
        r2 = gl.expand_dims(gl.arange(0, PK, layout=gl.SliceLayout(0, a_l)), 0)  # [1, PK]
        nmask = n2 < N
        w_ptrs = qw_ptr + (n2 // BN).to(gl.int64) * (KC * PK * BN) + r2 * BN + n2 % BN  # [BNW, PK]
        wmask = nmask & (r2 < PK)

        # A stage is CODES steps of x: [BM, CODES * 32], one TMA copy and one barrier.
        x_smem = gl.allocate_shared_memory(dt, [STAGES, BM, CODES * PK], x_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for b in gl.static_range(STAGES):
            mbarrier.init(ready.index(b), count=1)
        PER: gl.constexpr = 8 // CODES  # stages a chunk
        loads = KC * PER
        for b in gl.static_range(STAGES - 1):  # the first STAGES - 1 x tiles
            mbarrier.expect(ready.index(b), x_desc.block_type.nbytes, pred=b < loads)
            tma.async_copy_global_to_shared(x_desc, [row0, b * CODES * PK], ready.index(b), x_smem.index(b),
                                            pred=b < loads)

        acc = gl.zeros([BNW, BM], gl.float32, layout=acc_l)
        a_prev = gl.zeros([BNW, PK], dt, layout=a_l)
        wn = gl.load(w_ptrs, mask=wmask, other=0)
        sn_lo, zn_lo, sn_hi, zn_hi = _groups(s_ptr, z_ptr, 0, n2, nmask, N, G, GS, HAS_ZERO)
        for c in range(KC):
            words, s_lo, z_lo, s_hi, z_hi = wn, sn_lo, zn_lo, sn_hi, zn_hi
            more = c + 1 < KC
            wn = gl.load(w_ptrs + (c + 1) * (PK * BN), mask=wmask & more, other=0)
            sn_lo, zn_lo, sn_hi, zn_hi = _groups(s_ptr, z_ptr, gl.minimum(c + 1, KC - 1), n2, nmask, N, G, GS,
                                                 HAS_ZERO)
            for u in gl.static_range(PER):
                i = c * PER + u
                st = i % STAGES
                mbarrier.wait(ready.index(st), (i // STAGES) & 1)
                for jj in gl.static_range(CODES):
                    if u * CODES + jj < 4:
                        a = _decode(words, u * CODES + jj, s_lo, z_lo, dt, HALF_MATH)
                    else:
                        a = _decode(words, u * CODES + jj, s_hi, z_hi, dt, HALF_MATH)
                    xt = x_smem.index(st).slice(jj * PK, PK, dim=1).permute((1, 0))  # [32, BM]
                    acc = warpgroup_mma(a, xt, acc, is_async=True)
                    # The previous MMA is done: its operand registers (and x stage) are free.
                    acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_prev))
                    a_prev = a
                nxt = i + STAGES - 1
                ps = nxt % STAGES
                mbarrier.expect(ready.index(ps), x_desc.block_type.nbytes, pred=nxt < loads)
                tma.async_copy_global_to_shared(x_desc, [row0, nxt * CODES * PK], ready.index(ps), x_smem.index(ps),
                                                pred=nxt < loads)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        for b in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(b))

        # acc [BNW, BM] is y^T: element (n, m) goes to y[row0 + m, n].
        cols = gl.expand_dims(pid_n * BNW + gl.arange(0, BNW, layout=gl.SliceLayout(1, acc_l)), 1)  # [BNW, 1]
        rows = gl.expand_dims(row0 + gl.arange(0, BM, layout=gl.SliceLayout(0, acc_l)), 0)  # [1, BM]
        if HAS_BIAS:
            acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
        gl.store(y_ptr + rows.to(gl.int64) * stride_ym + cols, acc.to(y_ptr.dtype.element_ty),
                 mask=(rows < M) & (cols < N))
