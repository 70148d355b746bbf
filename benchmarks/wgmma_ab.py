"""A/B of one ``WgmmaConfig`` field on the measured table configs, on a CUDA GPU (Hopper),
timed as ``benchmarks/kernels.py`` times (L2-rotating copies, one CUDA graph); the variants
alternate twice in the same run, so clock drift hits both.

    PYTHONPATH=.:benchmarks python benchmarks/wgmma_ab.py --m 16 64 256 --set x16=True
    PYTHONPATH=.:benchmarks python benchmarks/wgmma_ab.py --m 16 --set x16=True --set x16=False

Each ``--set field=value[,field=value...]`` is a variant (the table's own config is always the
first); a variant the config refuses (e.g. x16 with one accumulator) is reported and skipped.
"""
from __future__ import annotations

import argparse
import ast
from dataclasses import replace

import torch

from kernels import SHAPES, baseline_us, copies_for, graph_us
from tune_kernels import make_layer, pack
from lowbit.kernels.triton import configs, launch


def variant(text: str) -> tuple[str, dict[str, str]]:
    """``--set`` text -> (its name, {field: value text})."""
    pairs = [f.split("=", 1) for f in text.split(",")]
    if not all(len(p) == 2 and p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is FIELD=VALUE[,FIELD=VALUE...], e.g. maxnreg=112")
    return text, dict(pairs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, nargs="+", default=[16])
    ap.add_argument("--set", action="append", default=[], type=variant, metavar="FIELD=VALUE[,FIELD=VALUE...]",
                    help="a variant (repeat for more)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("wgmma_ab.py needs a CUDA GPU (Hopper)")
    gen = torch.Generator().manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}; int4 g128 asym, fp16; us per call (best of two, then both)")
    for k, n in SHAPES:
        bn = configs.block_n(n, k, 4)
        pws = [pack(make_layer("wgmma", k, n, gen), bn) for _ in range(copies_for(k * n // 2))]
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            table = configs.wgmma_config(m, n, k, x.device)
            cfgs = {"table": table}
            for name, fields in args.set:
                try:
                    cfgs[name] = replace(table, **{f: ast.literal_eval(v) for f, v in fields.items()})
                except (ValueError, TypeError) as e:
                    print(f"  {k}x{n} M={m} {name}: skipped ({e})")
            times = {name: [] for name in cfgs}
            for _ in range(2):
                for name, cfg in cfgs.items():
                    times[name].append(graph_us([lambda pw=pw, c=cfg: launch.wgmma(x, pw, None, c) for pw in pws]))
            base = baseline_us(k, n, m, gen)
            cells = "  ".join(f"{name}: {min(t):.2f} ({t[0]:.2f}, {t[1]:.2f})" for name, t in times.items())
            print(f"{k}x{n:<6} M={m:<4} fp16 {base:6.2f}  {cells}  [{table}]", flush=True)
        del pws
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
