"""Run one int4 g128 (or NF4, ``--kind nf4``) layer's fast path a few times, for a profiler
to attach to:

    ncu --section SpeedOfLight --section WarpStateStats -k regex:gemv \\
        python benchmarks/profile_kernel.py --k 14336 --n 4096 --m 1

(the call goes through dispatch, so it runs the kernel and config that lowbit picks).
"""
from __future__ import annotations

import argparse
import sys

import torch

from kernels import random_linear4bit, random_quant_linear
from lowbit.kernels import load_fast_kernels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--m", type=int, default=1)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--kind", choices=["int4", "nf4"], default="int4", help="int4 g128 asym, or NF4 b64 dq")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/profile_kernel.py needs a CUDA GPU", file=sys.stderr)
        return 2
    load_fast_kernels()
    gen = torch.Generator().manual_seed(0)
    if args.kind == "nf4":
        layer = random_linear4bit(args.k, args.n, "nf4", gen)
    else:
        layer = random_quant_linear(args.k, args.n, 4, 128, False, gen)
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.float16)
    for _ in range(args.calls):
        layer(x)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
