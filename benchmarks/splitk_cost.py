"""What the split-K protocol and the launch chain cost the M = 1 GEMV (``gemv_half2``), on a
CUDA GPU, timed as ``benchmarks/kernels.py`` times (L2-rotating copies, one CUDA graph).

    PYTHONPATH=.:benchmarks python benchmarks/splitk_cost.py [--only gemv wgmma floor]

Per shape and split: the GEMV as dispatch runs it (each split adds its sums into the
workspace, takes a ticket, the last one reads the sums back and writes y), and the same
launch with the protocol left out (every split writes its own partial sums straight to y:
a wrong result, timed only to see what the protocol's atomics and round trips cost). Then
the read floor with and without PDL: a graphed kernel that loads the bytes, and with PDL
loads them before waiting for the kernel ahead, as the GEMV does. ``wgmma`` rows: the same
comparison for the tensor-core kernel at M = 16 and 256 (int4 g128, its tuned config's tile
at several splits).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from kernels import copies_for, graph_us, random_linear4bit, random_quant_linear
from read_floor import read_us
from lowbit.kernels import load_fast_kernels
from lowbit.kernels.triton import configs, launch
from lowbit.kernels.triton.layout import repack_int_group, repack_nf4

SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336)]
WGMMA_SHAPES = [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)]


class _WithoutProtocol:
    """The kernel, launched with SPLIT_K off whatever the grid (timing only)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        run = self.kernel[grid]
        return lambda *a, **kw: run(*a, **{**kw, "SPLIT_K": False})


def _packed(kind: str, k: int, n: int, gen: torch.Generator) -> list:
    bn = configs.block_n(n, k, 4)
    out = []
    for _ in range(copies_for(k * n // 2)):
        if kind == "nf4":
            lay = random_linear4bit(k, n, "nf4", gen)
            out.append(repack_nf4(lay.weight_4bit, lay.absmax_float(), lay.code, n, k, lay.blocksize, bn))
        else:
            lay = random_quant_linear(k, n, 4, 128, False, gen)
            out.append(repack_int_group(lay.qweight, lay.qzeros, lay.scales, lay.g_idx, 4, 128, bn))
    return out


def gemv_rows(gen: torch.Generator) -> None:
    print(f"{'kind':<6}{'K x N':>12}{'split':>7}{'warps':>7}{'protocol us':>13}{'without us':>12}{'cost us':>9}")
    for kind in ("int4", "nf4"):
        for k, n in SHAPES:
            pws = _packed(kind, k, n, gen)
            x = torch.randn(1, k, device="cuda", dtype=torch.float16)
            tuned = configs.half2_config(n, k, pws[0].qweight.shape[0], pws[0].chunks, x.device, lut=kind == "nf4")
            for split in (1, 2, 4, 8, 16, 32):
                if split > pws[0].chunks:
                    continue
                cfg = replace(tuned, split=split)
                calls = [lambda pw=pw: launch.gemv_half2(x, pw, None, cfg) for pw in pws]
                with_us, without_us = _timed_both(calls, launch, "int4_gemv_half2_kernel")
                _row(f"{kind:<6}{f'{k}x{n}':>12}{split:>7}{cfg.num_warps:>7}", with_us, without_us,
                     split == tuned.split)
            del pws
            torch.cuda.empty_cache()


def _row(head: str, with_us: float, without_us: float, tuned: bool) -> None:
    print(f"{head}{with_us:>13.2f}{without_us:>12.2f}{with_us - without_us:>9.2f}{' (tuned)' if tuned else ''}",
          flush=True)


def _timed_both(calls: list, module, name: str) -> tuple[float, float]:
    """(us with the protocol, us with the kernel ``module.name`` launched without it)."""
    kernel = getattr(module, name)
    with_us = graph_us(calls)
    setattr(module, name, _WithoutProtocol(kernel))
    try:
        return with_us, graph_us(calls)
    finally:
        setattr(module, name, kernel)


def wgmma_rows(gen: torch.Generator) -> None:
    from lowbit.kernels.triton import wgmma as wgmma_module

    print(f"\n{'kind':<6}{'K x N':>12}{'M':>5}{'split':>7}{'protocol us':>13}{'without us':>12}{'cost us':>9}")
    for k, n in WGMMA_SHAPES:
        pws = _packed("int4", k, n, gen)
        for m in (16, 256):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            tuned = configs.wgmma_config(m, n, k, x.device)
            for split in sorted({1, 2, 4, 8, tuned.split}):
                cfg = replace(tuned, split=split)
                calls = [lambda pw=pw: launch.wgmma(x, pw, None, cfg) for pw in pws]
                with_us, without_us = _timed_both(calls, wgmma_module, "int4_wgmma_kernel")
                _row(f"{'int4':<6}{f'{k}x{n}':>12}{m:>5}{split:>7}", with_us, without_us, split == tuned.split)
        del pws
        torch.cuda.empty_cache()


def floor_rows() -> None:
    print(f"\n{'MB read':>8}{'programs':>10}{'no PDL us':>11}{'PDL us':>9}")
    for mb in (2.2, 8.7, 30.4):
        for programs in (264, 528, 1056):
            us = [read_us(mb * 1e6, programs, 4, use_pdl) for use_pdl in (False, True)]
            print(f"{mb:>8.1f}{programs:>10}{us[0]:>11.2f}{us[1]:>9.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=["gemv", "wgmma", "floor"], help="only these sections")
    args = p.parse_args(argv)
    only = set(args.only or ["gemv", "wgmma", "floor"])
    if not torch.cuda.is_available():
        print("benchmarks/splitk_cost.py needs a CUDA GPU", file=sys.stderr)
        return 2
    load_fast_kernels()
    print(f"device: {torch.cuda.get_device_name()}")
    gen = torch.Generator().manual_seed(0)
    if "gemv" in only:
        gemv_rows(gen)
    if "wgmma" in only:
        wgmma_rows(gen)
    if "floor" in only:
        floor_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
