"""The f16x2 GEMV on a code book (NF4) compiled offline for sm_90 (no GPU needed).

The shuffle decode is only right if the value each lane shuffles out is the table entry of
that very lane. A first version held the table as a Triton tensor, and Triton moved it
between threads through shared memory when it changed layouts: right in the interpreter,
wrong on the GPU. The compiled kernel must therefore touch shared memory only after its
loop (the split-K ticket and the reduction over the rows of a column block), and shuffle
twice per code pair of a word."""
from __future__ import annotations

import re

import offline_sass
import pytest

pytest.importorskip("triton.backends.compiler")


def _sass(bn: int, warps: int, chunks: int, cols: int, predecode: bool = False) -> str:
    return offline_sass.sass(__file__, bn=bn, warps=warps, chunks=chunks, cols=cols, predecode=predecode)


def _compile(bn: int, warps: int, chunks: int, cols: int, predecode: bool = False) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lowbit.kernels.triton.gemv_half2 import int4_gemv_half2_kernel as kernel

    ptrs = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", zp_ptr="*i32", perm_ptr="*i32", lanes_ptr="*i32",
                bias_ptr="*fp16", y_ptr="*fp16", ws_ptr="*fp32", cnt_ptr="*i32")
    ints = dict.fromkeys(["M", "N", "K", "KC", "G", "stride_xm", "stride_ym", "chunks_per_split", "splits"], "i32")
    cx = dict(BN=bn, BNP=cols, C=chunks, PK=32, GS=64, NACC=2, SPLIT_K=True, LUT=True, EVEN_K=True, X_VEC=True, PREFETCH=1,
              HAS_ZERO=False, HAS_PERM=False, HAS_BIAS=False, INTERPRET=False, PDL=True, SILU=False, PREDECODE=predecode)
    sig = {**ptrs, **ints, **dict.fromkeys(cx, "constexpr")}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]]
             for n in list(ptrs) + ["N", "K", "KC", "G", "stride_xm", "stride_ym"]}
    src = ASTSource(fn=kernel, signature=sig, attrs=attrs,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in cx.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps)).asm["sass"]


def _loop_end(lines: list[str]) -> tuple[int, int]:
    """(first, last) line of the main loop: a label and the backward branch to it."""
    labels = {ln.strip().rstrip(":"): i for i, ln in enumerate(lines) if re.match(r"^\s*\.?L\w+:", ln)}
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?\.?(L\w+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            return labels[m.group(1)], i
    raise AssertionError("no loop in the SASS")


@pytest.mark.parametrize("bn,warps,chunks,cols,predecode", [
    (64, 4, 1, 64, False), (32, 2, 1, 32, False), (64, 16, 8, 16, False),  # H100 table
    (64, 8, 8, 16, True),  # the first step decoded before the PDL wait
])
def test_code_book_gemv_keeps_lane_values_out_of_shared_memory(bn, warps, chunks, cols, predecode):
    lines = _sass(bn, warps, chunks, cols, predecode).splitlines()
    first, last = _loop_end(lines)
    # Nothing goes through shared memory before the loop ends (after it: the split-K ticket
    # and the sum over the rows of a column block).
    assert not [ln for ln in lines[:last] if re.search(r"\b(LDS|STS)\b", ln)]
    # One shuffle a code: a step is chunks x 32 x cols words over 32 * warps threads, 8 codes a word.
    shuffles = [ln for ln in lines[first:last] if "SHFL.IDX" in ln]
    assert len(shuffles) == 8 * (chunks * 32 * cols // (32 * warps))
    if predecode:  # the first step's shuffles come before the PDL wait (ACQBULK), so before the loop
        wait = next(i for i, ln in enumerate(lines) if "ACQBULK" in ln)
        assert len([ln for ln in lines[:wait] if "SHFL.IDX" in ln]) == len(shuffles)


def test_last_split_writes_the_output_before_resetting_the_ticket_and_fences_nothing():
    """``epilogue.store_output``, the split-K meeting of the plain-Triton kernels: as the
    wgmma kernel's (``test_wgmma_sass``), no fence after the ticket, and the relaxed reset of
    the ticket is the last memory operation."""
    tail = offline_sass.after_ticket(_sass(64, 4, 1, 64))
    assert not [op for op in tail if op.startswith("MEMBAR")]
    assert tail[-1] == "ATOMG.E.EXCH"
    assert [op for op in tail if op.startswith("STG")]
