"""Config sweep for the tensor-core kernel (gemm_tc) and the NF4 GEMV, on a CUDA GPU.

    PYTHONPATH=. python benchmarks/tune_tc.py --log out.jsonl --best best.json [--quick]

Same timing as benchmarks/kernels.py (graphed calls rotating over weight copies larger than
L2, fp16 cuBLAS timed the same way in the same run). Every variant is compiled first in
parallel worker processes (Triton's disk cache then serves the timing process), and each
timed variant's output is checked against the plain-torch reference (``err``; a variant
over 4e-3 is never chosen). The best configs go into lowbit/kernels/triton/configs.py by
hand, with the log as the record.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict

import torch

from kernels import SHAPES, baseline_us, copies_for, graph_us, random_linear4bit, random_quant_linear
from lowbit.kernels import reference
from lowbit.kernels.triton import configs, launch
from lowbit.kernels.triton.layout import repack_int_group, repack_nf4

TC, GEMV = launch.TcConfig, launch.GemvConfig


def fill(programs: int) -> int:
    split = 1
    while programs * split < 132:
        split *= 2
    return split


def jobs_for(kind: str, k: int, n: int, quick: bool) -> list[tuple]:
    """(m, launcher, config) for one weight kind and shape."""
    out = []
    if kind == "int4":
        big = [(128, 64, 128, 4, 3), (128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (64, 128, 64, 4, 4),
               (128, 64, 64, 4, 4), (256, 64, 64, 8, 3), (128, 256, 32, 8, 3), (64, 64, 128, 4, 4)]
        if quick:
            big = big[:3]
        for bm, bnt, bk, w, st in big:
            tiles = -(-256 // bm) * -(-n // bnt)
            for flat in (False, True):
                for sp in sorted({1, fill(tiles)} if tiles < 132 else {1}):
                    out.append((256, "tc", TC(bm=bm, bnt=bnt, bk=bk, num_warps=w, num_stages=st, split=sp, flat=flat)))
        out.append((256, "dequant", launch.DequantConfig()))
        out.append((256, "gemm", launch.GemmConfig(bm=128, bnt=128, num_warps=8, num_stages=2)))
        for bm, bnt, bk in ((64, 64, 128), (64, 64, 64), (64, 128, 64)):
            f = fill(-(-n // bnt))
            for flat in (False, True):
                for sp in sorted({f // 2, f}):
                    out.append((64, "tc", TC(bm=bm, bnt=bnt, bk=bk, num_warps=4, num_stages=4, split=max(sp, 1),
                                             flat=flat, scale_after=True)))
        for sp in (fill(-(-n // 64)), 2 * fill(-(-n // 64))):
            out.append((64, "gemm", launch.GemmConfig(bm=64, bnt=64, split=sp, num_warps=4, num_stages=3)))
        for bnt, bk in ((64, 128), (64, 256), (128, 128)):
            f = fill(-(-n // bnt))
            for swap in (True, False):
                for sp in (f, 2 * f):
                    out.append((16, "tc", TC(bm=16, bnt=bnt, bk=bk, num_warps=4, num_stages=4, split=sp, swap=swap,
                                             scale_after=True, flat=True)))
    else:  # nf4, blocksize 64
        bn = configs.block_n(n, k, 4)
        f = fill(-(-n // bn))
        for pf in (False, True):
            for sp in (f, 2 * f, 4 * f):
                out.append((1, "gemv", GEMV(chunks=1, split=sp, num_warps=4, num_stages=1, prefetch=pf, lut_reg=True)))
        for bnt in (64, 128):
            f = fill(-(-n // bnt))
            for flat in (False, True):
                for sp in (f, 2 * f):
                    out.append((16, "tc", TC(bm=16, bnt=bnt, bk=64, num_warps=4, num_stages=4, split=sp, swap=True,
                                             scale_after=True, flat=flat)))
        out.append((16, "gemm", launch.GemmConfig(bm=16, bnt=64, split=fill(-(-n // 64)), swap=True, num_stages=1)))
        for bm, bnt, w in ((128, 128, 8), (64, 128, 4)):
            for flat in (False, True):
                out.append((256, "tc", TC(bm=bm, bnt=bnt, bk=64, num_warps=w, num_stages=3, scale_after=True,
                                          flat=flat)))
        out.append((256, "dequant", launch.DequantConfig()))
    return out


def final_jobs(kind: str, k: int, n: int, quick: bool) -> list[tuple]:
    """The last check before the table: M = 256 tile shapes that leave room for several
    programs per SM (shared memory), against dequantize + cuBLAS; M = 16 and 64 the table's
    configs against the best alternatives of the earlier sweeps."""
    out = [(256, "dequant", launch.DequantConfig())]
    for bm, bnt, bk, w, st in ((128, 64, 64, 4, 2), (128, 64, 128, 4, 2), (64, 64, 128, 4, 2), (128, 128, 64, 8, 2),
                               (64, 128, 64, 4, 2), (64, 64, 64, 4, 3), (128, 64, 64, 8, 2)):
        tiles = -(-256 // bm) * -(-n // bnt)
        for sp in sorted({1, fill(tiles)} if tiles < 132 else {1}):
            out.append((256, "tc", TC(bm=bm, bnt=bnt, bk=bk, num_warps=w, num_stages=st, split=sp)))
    key = (n, k, 4)
    out.append((16, "gemm", configs.GEMM[key + (16,)]))
    f = fill(-(-n // 64))
    out.append((16, "tc", TC(bm=16, bnt=64, bk=256, split=f, num_warps=4, num_stages=4, scale_after=True)))
    out.append((16, "tc", TC(bm=16, bnt=64, bk=128, split=f, num_warps=4, num_stages=4, swap=True, scale_after=True)))
    out.append((64, "tc", configs.GEMM[key + (64,)]))
    out.append((64, "gemm", launch.GemmConfig(bm=64, bnt=64, split=f, num_warps=4, num_stages=3)))
    return out


def swap_jobs(kind: str, k: int, n: int, quick: bool) -> list[tuple]:
    """M = 256 with the weights as the left operand (``swap``): the decoded tile then feeds
    the tensor cores from registers (wgmma's A operand) instead of going through shared
    memory; ``flat`` decodes it in place. Token tiles of 128 and 256 (all of M: every weight
    decoded once), weight tiles of 64 and 128 rows, split-K to fill the SMs."""
    out = [(256, "dequant", launch.DequantConfig())]
    for bm, bnt, bk, w, st in ((256, 128, 64, 8, 3), (256, 128, 32, 8, 4), (256, 64, 64, 4, 3), (256, 64, 64, 8, 3),
                               (256, 128, 64, 8, 2), (128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 64, 64, 4, 4),
                               (256, 64, 128, 4, 2), (128, 256, 64, 8, 2))[:3 if quick else None]:
        tiles = -(-256 // bm) * -(-n // bnt)
        for sp in sorted({1, fill(tiles)}):
            out.append((256, "tc", TC(bm=bm, bnt=bnt, bk=bk, num_warps=w, num_stages=st, split=sp, swap=True,
                                      flat=True)))
    for sp in sorted({1, fill(-(-n // 128))}):
        out.append((256, "tc", TC(bm=256, bnt=128, bk=64, num_warps=8, num_stages=2, split=sp, swap=True)))
    return out


def make(kind: str, k: int, n: int, gen: torch.Generator):
    """(layer, packed weight) with the layout block dispatch would use."""
    bn = configs.block_n(n, k, 4)
    if kind == "int4":
        lay = random_quant_linear(k, n, 4, 128, False, gen)
        return lay, repack_int_group(lay.qweight, lay.qzeros, lay.scales, lay.g_idx, 4, 128, bn)
    lay = random_linear4bit(k, n, "nf4", gen)
    return lay, repack_nf4(lay.weight_4bit, lay.absmax_float(), lay.code, n, k, 64, bn)


def run(x, pw, launcher: str, cfg):
    if launcher == "gemv":
        return launch.gemv(x, pw, None, cfg)
    if launcher == "gemm":
        return launch.gemm(x, pw, None, cfg)
    if launcher == "dequant":
        return launch.dequant_matmul(x, pw, None, cfg)
    return launch.gemm_tc(x, pw, None, configs.fit_shared_tc(cfg, pw.mode == "lut"))


def inspect(path: str) -> None:
    """Registers, spills and instruction counts of a few gemm_tc variants (4096x4096, M=256)."""
    gen = torch.Generator().manual_seed(2)
    _, pw = make("int4", 4096, 4096, gen)
    x = torch.randn(256, 4096, device="cuda", dtype=torch.float16)
    words = ("wgmma.mma_async", "mma.sync", "cp.async", "ld.shared", "st.shared", "ldmatrix", "bar.sync",
             "cvt.", "ld.global", "shfl")
    with open(path, "w") as f:
        for cfg in (TC(bm=128, bnt=64, bk=128, num_warps=4, num_stages=3),
                    TC(bm=128, bnt=64, bk=128, num_warps=4, num_stages=3, flat=True),
                    TC(bm=128, bnt=128, bk=64, num_warps=8, num_stages=3, flat=True)):
            run(x, pw, "tc", cfg)
            h = launch.LAST_TC
            ptx = h.asm.get("ptx", "")
            counts = {w: ptx.count(w) for w in words}
            f.write(f"{cfg}: regs {h.n_regs} spills {h.n_spills} shared {h.metadata.shared} {counts}\n")
        f.write(h.asm.get("ttgir", ""))


def ref(kind: str, x, lay):
    if kind == "int4":
        return reference.int_group_linear(x.float(), lay.qweight, lay.qzeros, lay.scales, lay.g_idx, 4)
    return reference.nf4_linear(x.float(), lay.weight_4bit, lay.absmax_float(), "nf4", 64, torch.float32)


def _compile_worker(batch: list[tuple]) -> list[str]:
    torch.cuda.init()
    gen = torch.Generator().manual_seed(1)
    made, failures = {}, []
    for kind, k, n, m, launcher, cfg in batch:
        if (kind, k, n) not in made:
            made[(kind, k, n)] = make(kind, k, n, gen)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        try:
            run(x, made[(kind, k, n)][1], launcher, cfg)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a variant that does not compile is skipped, and listed
            failures.append(f"{kind} {k}x{n} m={m} {launcher} {cfg}|{type(e).__name__}: {str(e)[:300]}")
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", required=True)
    p.add_argument("--best", required=True)
    p.add_argument("--kinds", nargs="+", default=["int4", "nf4"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--final", action="store_true", help="the short int4 check (final_jobs) instead of the sweep")
    p.add_argument("--swap", action="store_true", help="int4 M = 256 with the weights as left operand (swap_jobs)")
    p.add_argument("--table-out", metavar="JSON", help="best per shape and M in the configs.load_table format")
    p.add_argument("--inspect", metavar="TXT", help="also write registers/instructions of a few variants here")
    args = p.parse_args(argv)
    if args.inspect:
        try:
            inspect(args.inspect)
        except Exception as e:  # noqa: BLE001 - the sweep matters more than the inspection
            print(f"inspect failed: {type(e).__name__}: {e}", flush=True)
    shapes = SHAPES[:1] if args.quick else SHAPES
    pick = final_jobs if args.final else swap_jobs if args.swap else jobs_for
    jobs = [(kind, k, n) + j for kind in args.kinds for k, n in shapes for j in pick(kind, k, n, args.quick)]
    t = time.perf_counter()
    procs = min(14, os.cpu_count() or 4)
    with mp.get_context("spawn").Pool(procs) as pool:
        failures = [f for fs in pool.map(_compile_worker, [jobs[i::procs] for i in range(procs)]) for f in fs]
    print(f"precompiled {len(jobs)} variants in {time.perf_counter() - t:.0f} s, {len(failures)} failed", flush=True)
    for f in failures[:10]:
        print("  failed:", f, flush=True)
    failed = {f.split("|")[0] for f in failures}
    gen = torch.Generator().manual_seed(0)
    best: dict = {}
    with open(args.log, "w") as log:
        for kind in args.kinds:
            for k, n in shapes:
                mine = [j for j in jobs if j[:3] == (kind, k, n)]
                base = {m: baseline_us(k, n, m, gen) for m in sorted({j[3] for j in mine})}
                probe = make(kind, k, n, gen)
                pws = [probe[1]] + [make(kind, k, n, gen)[1] for _ in range(copies_for(probe[1].nbytes()) - 1)]
                for _, _, _, m, launcher, cfg in mine:
                    if f"{kind} {k}x{n} m={m} {launcher} {cfg}" in failed:
                        continue
                    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                    r = ref(kind, x, probe[0])
                    err = ((run(x, pws[0], launcher, cfg).float() - r).abs().max() / r.abs().max()).item()
                    us = graph_us([lambda pw=pw: run(x, pw, launcher, cfg) for pw in pws], inner=2, replays=7)
                    rec = dict(kind=kind, k=k, n=n, m=m, launcher=launcher, cfg=asdict(cfg), us=us, fp16_us=base[m],
                               speedup=base[m] / us, err=err)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    key = f"{kind} {k}x{n} m={m}"
                    if err < 4e-3 and (key not in best or us < best[key]["us"]):
                        best[key] = rec
                del pws, probe
                torch.cuda.empty_cache()
                with open(args.best, "w") as f:  # after every shape: a run cut short keeps its results
                    json.dump(best, f, indent=1)
                if args.table_out:
                    with open(args.table_out, "w") as f:
                        json.dump([dict(kind=r["launcher"], n=r["n"], k=r["k"], bits=4, m=r["m"], cfg=r["cfg"],
                                        mode="lut" if r["kind"] == "nf4" else "int") for r in best.values()], f,
                                  indent=1)
    for key, r in best.items():
        print(f"best {key}: {r['us']:.1f} us vs fp16 {r['fp16_us']:.1f} ({r['speedup']:.2f}x) {r['launcher']} "
              f"{r['cfg']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
