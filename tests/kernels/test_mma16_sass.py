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
    warps = constexprs["WC"] * constexprs["WR"] * constexprs["WH"]
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps)).asm["sass"]


@pytest.mark.parametrize("c,v,bnp,wc,wr,wh,depth", [
    (1, 4, 64, 1, 1, 2, 2),  # one chunk a step over the whole block
    (1, 4, 64, 1, 2, 1, 1),
    (8, 4, 32, 8, 2, 1, 2),  # 8 chunks a step over half the block, a warp per chunk half
    (4, 2, 16, 2, 2, 1, 1),  # 2 columns a lane
])
def test_mma16_loop_has_no_shared_memory_traffic(c, v, bnp, wc, wr, wh, depth):
    sass = _sass(BN=64, BNP=bnp, C=c, V=v, PK=32, GS=128, SPLIT_K=True, EVEN_K=True, HAS_ZERO=True, HAS_BIAS=False,
                 PDL=True, WC=wc, WR=wr, WH=wh, DEPTH=depth, X_BF16=False)
    ops = re.findall(r"\b(HMMA\.16816\.F32|STS|LDS|LDSM|BAR\.SYNC)\b", sass)
    last_mma = max(i for i, op in enumerate(ops) if op.startswith("HMMA"))
    assert not [op for op in ops[:last_mma] if not op.startswith("HMMA")]
    # Per step a thread decodes 4 rows x (C / WC) chunks x (2 / WR) row halves x
    # (BNP / 8 v / WH) column groups x v columns of words, two MMAs each; the loop body is
    # emitted once.
    words = 4 * (c // wc) * (2 // wr) * (bnp // (8 * v) // wh) * v
    assert ops.count("HMMA.16816.F32") == 2 * words


def test_last_split_writes_the_output_before_resetting_the_ticket_and_fences_nothing():
    """As the wgmma kernel's meeting (``test_wgmma_sass``): no fence after the ticket, and the
    relaxed reset of the ticket is the last memory operation."""
    tail = offline_sass.after_ticket(_sass(BN=64, BNP=64, C=1, V=4, PK=32, GS=128, SPLIT_K=True, EVEN_K=True,
                                           HAS_ZERO=True, HAS_BIAS=False, PDL=True, WC=1, WR=1, WH=2, DEPTH=2,
                                           X_BF16=False))
    assert not [op for op in tail if op.startswith("MEMBAR")]
    assert tail[-1] == "ATOMG.E.EXCH"
    assert [op for op in tail if op.startswith("STG")]
