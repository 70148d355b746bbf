"""The wgmma kernel compiled offline for sm_90 (no GPU needed): the weights must reach the
tensor cores from registers. Shared memory is for x (written by TMA, read by the MMA), so
no thread stores to or loads from it between the first and the last MMA of the loop."""
from __future__ import annotations

import re

import offline_sass
import pytest

pytest.importorskip("triton.experimental.gluon._runtime")


def _sass(bm: int, codes: int, split: bool, lut: bool = False, mmas: int = 2, accs: int = 1) -> str:
    return offline_sass.sass(__file__, bm=bm, codes=codes, split=split, lut=lut, mmas=mmas, accs=accs)


def _compile(bm: int, codes: int, split: bool, lut: bool = False, mmas: int = 2, accs: int = 1) -> str:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import _runtime as runtime
    from triton.runtime.jit import mangle_type

    from lowbit.kernels.triton import wgmma

    kernel = wgmma.int4_wgmma_kernel
    desc = wgmma.x_descriptor(torch.empty(512, 4096, dtype=torch.float16), bm, codes)
    ptrs = dict(qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", lanes_ptr="*i32", bias_ptr="*fp16", y_ptr="*fp16",
                ws_ptr="*fp32", cnt_ptr="*i32")
    ints = dict.fromkeys(["M", "N", "KC", "G", "stride_ym", "chunks_per_split", "splits"], "i32")
    cx = dict(BN=64, BNW=64, BM=bm, GS=64 if lut else 128, STAGES=3, CODES=codes, MMAS=mmas, ACCS=accs, SPLIT_K=split, PDL=True,
              HAS_ZERO=not lut, HAS_BIAS=False, HALF_MATH=True, LUT=lut, RED4=True, num_warps=4)
    sig = {"x_desc": mangle_type(desc), **ptrs, **ints, **dict.fromkeys(cx, "constexpr")}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in list(ptrs) + ["N", "KC", "G", "stride_ym"]}
    src = runtime.GluonASTSource(fn=kernel, signature=sig, attrs=attrs,
                                 constexprs={(kernel.arg_names.index(k),): v for k, v in cx.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["sass"]


@pytest.mark.parametrize("bm,codes,split,lut,mmas,accs", [
    (16, 4, True, False, 2, 1), (128, 2, False, False, 2, 1), (16, 4, True, True, 2, 1),
    (16, 4, False, False, 3, 4), (16, 8, True, True, 1, 2),  # steps into 4 / 2 accumulators in turn
])
def test_wgmma_takes_the_weights_from_registers(bm, codes, split, lut, mmas, accs):
    """int4 and code books (lut: the decode shuffles registers between lanes, no memory)."""
    sass = _sass(bm, codes, split, lut, mmas, accs)
    mmas = re.findall(rf"HGMMA\.64x{bm}x16\.F32 R\d+, (\S+),", sass)
    # A chunk is 8 code positions of two k16 MMAs each; the loop body is emitted once.
    assert len(mmas) == 16
    assert all(a.startswith("R") for a in mmas)  # the A operand is registers, not a shared-memory descriptor
    ops = re.findall(r"\b(HGMMA|STS|LDS|LDSM)\b", sass)
    first, last = ops.index("HGMMA"), len(ops) - 1 - ops[::-1].index("HGMMA")
    assert not [op for op in ops[first:last] if op != "HGMMA"]
