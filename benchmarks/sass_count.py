"""Instructions per weight in the M = 1 GEMV loops, from the SASS Triton compiles for an
H100 (sm_90) - on any machine, GPU or not (the triton wheel ships ptxas and nvdisasm).

    python benchmarks/sass_count.py            # both int4 GEMVs at g128, asymmetric; the f16x2
                                               # one on an NF4 code book, blocks of 64

At 4 bits an H100 SM issues about five instructions in the time HBM delivers one weight's
bits, so the loop's instruction count per weight says whether a GEMV can reach memory
speed; this counts them without device time. The loop is the one with the backward branch;
weights per iteration = PK * BN * 8 codes / threads.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

PTRS_COMMON = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", perm_ptr="*i32", bias_ptr="*fp16", y_ptr="*fp16",
                   ws_ptr="*fp32", cnt_ptr="*i32")
ALIGNED_INTS = ("N", "K", "KC", "G", "stride_xm", "stride_ym")  # what the JIT sees as multiples of 16


def compile_sass(fn, ptrs: dict, ints: list[str], constexprs: dict, num_warps: int) -> str:
    sig = {**ptrs, **{n: "i32" for n in ints}, **{k: "constexpr" for k in constexprs}}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in list(ptrs) + list(ALIGNED_INTS)
             if n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=1))
    return kernel.asm["sass"]


def _op(line: str) -> str | None:
    m = re.match(r"\s*\S+\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
    return m.group(2).split(".")[0] if m else None


def main_loop(sass: str) -> collections.Counter:
    """Opcode counts of the longest loop (label ... backward branch to it)."""
    lines = sass.splitlines()
    labels = {ln.strip().rstrip(":"): i for i, ln in enumerate(lines) if re.match(r"^\s*\.?L\w+:", ln)}
    best = collections.Counter()
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?\.?(L\w+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = collections.Counter(op for op in map(_op, lines[labels[m.group(1)]:i + 1]) if op)
            if sum(body.values()) > sum(best.values()):
                best = body
    return best


def kernels(bn: int, warps: int, chunks: int, cols: int, predecode: bool = False):
    from lowbit.kernels.triton.gemv import int_gemv_kernel
    from lowbit.kernels.triton.gemv_half2 import int4_gemv_half2_kernel

    ints = ["M", "N", "K", "KC", "G", "stride_xm", "stride_ym", "chunks_per_split", "splits"]
    flags = dict(SPLIT_K=True, EVEN_K=True, HAS_ZERO=True, HAS_PERM=False, HAS_BIAS=False)
    yield ("gemv (fp32)", int_gemv_kernel, {**PTRS_COMMON, "z_ptr": "*fp16", "lut_ptr": "*fp32"}, ints + ["magic"],
           dict(BITS=4, BN=bn, PK=32, C=1, GS=128, JR=4, EVEN_C=True, PREFETCH=False, LUT_REG=False, MODE_LUT=False, PDL=False,
                **flags))
    ptrs = {k: v for k, v in PTRS_COMMON.items()}
    ptrs["zp_ptr"] = "*i32"
    ptrs["lanes_ptr"] = "*i32"
    order = ["x_ptr", "qw_ptr", "s_ptr", "zp_ptr", "perm_ptr", "lanes_ptr", "bias_ptr", "y_ptr", "ws_ptr", "cnt_ptr"]
    yield ("gemv_half2 (f16x2)", int4_gemv_half2_kernel, {k: ptrs[k] for k in order}, ints,
           dict(BN=bn, BNP=cols, C=chunks, PK=32, GS=128, NACC=1, X_VEC=True, PREFETCH=True, INTERPRET=False, PDL=False, SILU=False,
                LUT=False, PREDECODE=predecode, **flags))
    yield ("half2 NF4 b64", int4_gemv_half2_kernel, {**{k: ptrs[k] for k in order}, "s_ptr": "*fp32"}, ints,
           dict(BN=bn, BNP=cols, C=chunks, PK=32, GS=64, NACC=2, X_VEC=True, PREFETCH=True, INTERPRET=False, PDL=False, SILU=False,
                LUT=True, PREDECODE=predecode, **{**flags, "HAS_ZERO": False}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bn", type=int, default=64, help="layout column block")
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--chunks", type=int, default=1, help="f16x2 GEMVs: chunks a loop step")
    p.add_argument("--cols", type=int, help="f16x2 GEMVs: columns a program (default: --bn)")
    p.add_argument("--predecode", action="store_true",
                   help="f16x2 GEMVs: decode a step's codes ahead of its FMAs (GemvConfig.predecode)")
    args = p.parse_args(argv)
    cols = args.cols or args.bn
    print(f"{'kernel':<20}{'loop instr':>11}{'weights':>9}{'per weight':>11}  top opcodes")
    for name, fn, ptrs, ints, cx in kernels(args.bn, args.warps, args.chunks, cols, args.predecode):
        loop = main_loop(compile_sass(fn, ptrs, ints, cx, args.warps))
        # a loop step's words (the fp32 gemv: one chunk of bn columns), spread over the threads
        step = 32 * args.chunks * cols if "BNP" in cx else 32 * args.bn
        weights = step * 8 // (32 * args.warps)
        total = sum(loop.values())
        top = ", ".join(f"{op} {c}" for op, c in loop.most_common(6))
        print(f"{name:<20}{total:>11}{weights:>9}{total / weights:>11.2f}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
