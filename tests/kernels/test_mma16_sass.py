"""The mma16 kernel compiled offline for sm_90 (no GPU needed): its MMA loop must not go
through shared memory. Layout conversions there (shared-memory stores, loads and barriers
between the decode and the MMAs) are what made the plain-Triton version of this kernel both
slow and wrong; with the lane layout fixed in Gluon, only the epilogue's cross-warp sum may
use shared memory."""
from __future__ import annotations

import re

import offline_sass
import pytest

pytest.importorskip("triton.experimental.gluon._runtime")


def _sass(**constexprs) -> str:
    return offline_sass.sass(__file__, **constexprs)


def _compile(**constexprs) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import _runtime as runtime

    from lowbit.kernels.triton.mma16 import int4_mma16_kernel as kernel

    ptrs = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", zp_ptr="*i32", bias_ptr="*fp16", y_ptr="*fp16",
                ws_ptr="*fp32", cnt_ptr="*i32")
    ints = dict.fromkeys(["M", "N", "K", "KC", "G", "stride_xm", "stride_ym", "chunks_per_split", "splits"], "i32")
    sig = {**ptrs, **ints, **dict.fromkeys(constexprs, "constexpr")}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in list(ptrs) + ["N", "K", "KC", "G", "stride_xm", "stride_ym"]}
    src = runtime.GluonASTSource(fn=kernel, signature=sig, attrs=attrs,
                                 constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    warps = constexprs["WR"] * constexprs["WH"]
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps)).asm["sass"]


@pytest.mark.parametrize("wr,wh,depth", [(1, 2, 2), (2, 1, 1)])
def test_mma16_loop_has_no_shared_memory_traffic(wr, wh, depth):
    sass = _sass(BN=64, PK=32, GS=128, SPLIT_K=True, EVEN_K=True, HAS_ZERO=True, HAS_BIAS=False, PDL=True,
                 WR=wr, WH=wh, DEPTH=depth, X_BF16=False)
    ops = re.findall(r"\b(HMMA\.16816\.F32|STS|LDS|LDSM|BAR\.SYNC)\b", sass)
    last_mma = max(i for i, op in enumerate(ops) if op.startswith("HMMA"))
    assert not [op for op in ops[:last_mma] if not op.startswith("HMMA")]
    # Per chunk a thread decodes 4 rows x (2 / WR) row halves x (BN / 32 / WH) quads x 4
    # columns of words, two MMAs each; the loop body is emitted once.
    words = 4 * (2 // wr) * (64 // 32 // wh) * 4
    assert ops.count("HMMA.16816.F32") == 2 * words
