"""Config sweep for the Triton kernels (``benchmarks/kernels.py --tune out.jsonl``).

Compiles every variant first in parallel worker processes (Triton's on-disk cache then
serves the timing process), then times each (shape, layout block, M, config) with the same
graphed, L2-rotating method as the table, writing one JSON line per timing. The best
configs go into lowbit/kernels/triton/configs.py by hand, with the log as the record.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict

import torch

from kernels import SHAPES, baseline_us, copies_for, graph_us, random_linear4bit, random_quant_linear
from lowbit.kernels.triton import configs, launch
from lowbit.kernels.triton.layout import repack_int_group, repack_nf4

#: Kinds timed on an NF4 (blocks of 64, double-quantized) layer instead of int4 g128 asym.
LUT_KINDS = ("half2_lut", "wgmma_lut")


def fill_split(programs: int, chunks: int) -> int:
    split = 1
    while programs * split < 264 and split * 2 <= chunks:
        split *= 2
    return split


def splits_around(programs: int, chunks: int) -> list[int]:
    f = fill_split(programs, chunks)
    return sorted({s for s in (max(1, f // 2), f, f * 2, f * 4) if s <= chunks})


def split_meetings(kind: str, fields: dict) -> list[dict]:
    """How ``wgmma``'s K splits may meet (WgmmaConfig fields) for a config of ``fields``:
    float32 global atomics; fp16 ones (int4: half the atomics); a cluster meeting in shared
    memory (session 15: faster at 2 and 8 splits on three M = 16 shapes; clusters of 16 never
    were, so not swept); or the cluster meeting on st.async (session 16: not yet timed). Those
    the config refuses (WgmmaConfig.valid) are left out."""
    if fields["split"] == 1:
        return [{}]
    out = [dict(half_sums=False)] + ([dict(half_sums=True)] if kind == "wgmma" else [])
    if fields["split"] != 16:
        out.append(dict(cluster=True))
    out.append(dict(cluster=True, meet_async=True))
    return [meet for meet in out if launch.WgmmaConfig.valid(**fields, **meet)]


def wgmma_jobs(m: int, n: int, kc: int, quick: bool) -> list[tuple]:
    """(kind, WgmmaConfig) swept at M = m for N = n and kc chunks."""
    out = []
    # one row tile of >= M rows (from 16) below 64 rows; from 64 on, tiles of 64 up to M (and two
    # of 32 at 64: 4096x1024's best, s12 run 2)
    row_tiles = ([max(16, 1 << (m - 1).bit_length())] if m < 64 else
                 [b for b in (32, 64, 128, 256) if b <= m and (b > 32 or m == 64)])
    # (128, 4): two row blocks a warp measured 2-4x slower (run 16); 128 columns of 8 warps were
    # 4096x4096's best at M = 16 (s12 run 2)
    for bm, (bnw, w) in itertools.product(row_tiles, ((64, 4), (128, 8))):
        tiles = -(-m // bm) * -(-n // bnw)
        grid = itertools.product(
            # one step a stage measured slower everywhere (run 16); a whole chunk a stage (8
            # codes, 4 TMA boxes) fits 3 stages up to 128 rows
            (2, 4, 8) if bm <= 128 else (2, 4),
            (4,) if quick else (3, 5),
            sorted({1} | set(splits_around(tiles, kc))) if tiles < 132 else (1,),
            # several accumulators pay where a program has few steps (s12 runs 1-2)
            ((1, 1), (2, 1), (1, 2), (3, 4)),
            # PDL helped at M = 16 and 64 and hurt most at 256 (run 26, s12 run 2)
            (False, True) if m <= 64 else (False,),
            ("wgmma", "wgmma_lut"))  # int4 g128, NF4 b64
        for codes, st, sp, (mmas, accs), pdl, kind in grid:
            if mmas > codes:
                continue
            # x16 (int4, several accumulators): faster on some shapes, slower on others (s13 run 1)
            # a program of one int4 chunk may decode it before the PDL wait (s19: not yet timed)
            one_chunk = codes == 8 and pdl and launch.WgmmaConfig.one_chunk(-(-kc // sp), kind == "wgmma_lut")
            for x16, predecode in itertools.product((False, True) if accs > 1 and kind == "wgmma" else (False,),
                                                    (False, True) if one_chunk else (False,)):
                fields = dict(bm=bm, bnw=bnw, codes=codes, stages=st, num_warps=w, split=sp, mmas=mmas,
                              accs=accs, pdl=pdl, x16=x16, predecode=predecode)
                for meet in split_meetings(kind, fields):
                    out.append((kind, launch.WgmmaConfig(**fields, **meet)))
    return out


def jobs_for(k: int, n: int, quick: bool) -> list[tuple]:
    """(block_n, kind, m, config) for one shape."""
    kc = k // 256
    out = []
    for bn in (32, 64):  # 128 measured slower on every shape (run 6)
        nb = -(-n // bn)
        for w in (2, 4, 8):  # one warp: never faster, up to 20% slower (h100_tune_half2_w1_s7run9.jsonl)
            for depth in (1, 2):  # no prefetch measured slower on every shape (run 6)
                for sp in splits_around(nb, kc):
                    out.append((bn, "half2", 1, launch.GemvConfig(split=sp, num_warps=w, num_stages=1, prefetch=True,
                                                                  depth=depth, half2=True)))
                    if bn == configs.block_n(n, k, 4):  # code-book layers get the int4 layer's block
                        out.append((bn, "half2_lut", 1, launch.GemvConfig(split=sp, num_warps=w, num_stages=1,
                                                                          prefetch=True, depth=depth, half2=True)))
    # Several chunks a step over part of the layer's block: the K splits then meet in the
    # program's own sum, without split-K (the programs come from the narrower columns; two
    # splits and steps of 2 chunks were never the best, h100_tune_half2_steps_s9run1/2).
    bn = configs.block_n(n, k, 4)
    for c in (4, 8, 16):
        for cols in (bn // 2, bn // 4, bn // 8, bn // 16):
            for w in (4, 8, 16, 32):
                for depth in (1, 2):
                    # also with the first step decoded before the PDL wait
                    for kind, pre in (("half2", False), ("half2", True), ("half2_lut", False), ("half2_lut", True)):
                        out.append((bn, kind, 1, launch.GemvConfig(chunks=c, cols=cols, num_warps=w, num_stages=1,
                                                                   prefetch=True, depth=depth, half2=True,
                                                                   predecode=pre)))
    for bn in (32, 64):
        nb = -(-n // bn)
        for wr, wh in ((1, 1), (2, 1), (1, 2), (2, 2)):
            if bn % (32 * wh) == 0:
                for sp in splits_around(nb, kc):
                    for depth in (1, 2):
                        out.append((bn, "mma16", 16, launch.Mma16Config(split=sp, wr=wr, wh=wh, depth=depth)))
    # Several chunks a step over part of the layer's block (as the M = 1 GEMV's steps): the
    # warps split the step's chunks and their row halves, and sum them at the end.
    bn = configs.block_n(n, k, 4)
    nb = -(-n // bn)
    for v, cols in ((4, bn), (4, bn // 2), (2, bn // 2), (2, bn // 4), (1, bn // 4), (1, bn // 8)):
        if cols < 8 * v:
            continue
        programs = nb * (bn // cols)
        for c in (4, 8, 16):
            for wc, wr in ((4, 1), (8, 1), (16, 1), (2, 2), (4, 2), (8, 2)):
                if wc <= c:
                    for depth in (1, 2):
                        for sp in (1, 2, 4) if programs < 100 else (1,):
                            out.append((bn, "mma16", 16, launch.Mma16Config(
                                chunks=c, wc=wc, wr=wr, v=v, cols=cols, split=sp, depth=depth)))
    bn = configs.block_n(n, k, 4)  # the layout the layer gets (shared with the M = 1 GEMV)
    for m in (2, 8, 16, 32, 64, 128, 256):
        out += [(bn, kind, m, cfg) for kind, cfg in wgmma_jobs(m, n, kc, quick)]
    for bn in (32, 64):
        nb = -(-n // bn)
        for c, w in ((1, 4), (2, 4), (1, 8), (2, 8), (4, 8)):
            for pf in (True, False):
                for sp in splits_around(nb, kc):
                    out.append((bn, "gemv", 1, launch.GemvConfig(chunks=c, split=sp, num_warps=w, num_stages=1,
                                                                 prefetch=pf)))
    bn = 64
    for bnt in (64, 128):
        for swap in (False, True):
            for st in ((3,) if quick else (3, 4)):
                for sp in splits_around(-(-n // bnt), kc):
                    out.append((bn, "gemm", 16, launch.GemmConfig(bm=16, bnt=bnt, split=sp, swap=swap, num_warps=4,
                                                                  num_stages=st)))
    for bm, bnt, w in ((64, 128, 4), (128, 128, 8), (128, 64, 4), (128, 256, 8), (256, 128, 8)):
        for st in (2, 3):
            tiles = -(-256 // bm) * -(-n // bnt)
            for sp in sorted({1} | set(splits_around(tiles, kc)[1:])):
                out.append((bn, "gemm", 256, launch.GemmConfig(bm=bm, bnt=bnt, split=sp, num_warps=w, num_stages=st)))
    return out


LAUNCH = {"gemv": launch.gemv, "half2": launch.gemv_half2, "half2_lut": launch.gemv_half2, "mma16": launch.mma16,
          "gemm": launch.gemm, "wgmma": launch.wgmma, "wgmma_lut": launch.wgmma}


def make_layer(kind: str, k: int, n: int, gen: torch.Generator):
    return random_linear4bit(k, n, "nf4", gen) if kind in LUT_KINDS else random_quant_linear(k, n, 4, 128, False, gen)


def pack(layer, bn: int):
    """The layer in the kernel layout with column block ``bn``."""
    if hasattr(layer, "weight_4bit"):
        return repack_nf4(layer.weight_4bit, layer.absmax_float(), layer.code, layer.out_features, layer.in_features,
                          layer.blocksize, bn)
    return repack_int_group(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, 4, 128, bn)


def _compile_worker(batch: list[tuple]) -> list[str]:
    """Run each job once (compiling it into Triton's disk cache); returns failures."""
    torch.cuda.init()
    gen = torch.Generator().manual_seed(1)
    failures, layers = [], {}
    for k, n, bn, kind, m, cfg in batch:
        lut = kind in LUT_KINDS
        if (k, n, lut) not in layers:
            layers[(k, n, lut)] = make_layer(kind, k, n, gen)
        pw = pack(layers[(k, n, lut)], bn)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        try:
            LAUNCH[kind](x, pw, None, cfg)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - a config that does not compile (e.g. shared memory) is skipped
            failures.append(f"{k}x{n} bn={bn} {kind} m={m} {cfg}: {type(e).__name__}: {str(e)[:200]}")
    return failures


def precompile(jobs: list[tuple], procs: int) -> set[tuple]:
    t = time.perf_counter()
    batches = [jobs[i::procs] for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        failures = [f for fs in pool.map(_compile_worker, batches) for f in fs]
    print(f"precompiled {len(jobs)} jobs in {time.perf_counter() - t:.0f} s, {len(failures)} failed", flush=True)
    for f in failures[:20]:
        print("  failed:", f, flush=True)
    return {f.split(":")[0] for f in failures}


def tune(args) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = args.shapes or (SHAPES[:1] if args.quick else SHAPES)
    all_jobs = [(k, n) + j for k, n in shapes for j in jobs_for(k, n, args.quick)
                if (not args.only or j[1] in args.only) and (not args.tune_m or j[2] in args.tune_m)]
    failed = precompile(all_jobs, min(14, os.cpu_count() or 4))
    best: dict = {}
    with open(args.tune, "w") as log:
        for k, n in shapes:
            base = {m: baseline_us(k, n, m, gen) for m in sorted({j[4] for j in all_jobs})}
            for lut in (False, True):
                kinds = [j for j in all_jobs if j[:2] == (k, n) and (j[3] in LUT_KINDS) == lut]
                if not kinds:
                    continue
                layers = [make_layer(kinds[0][3], k, n, gen) for _ in range(copies_for(k * n // 2))]
                for bn in sorted({j[2] for j in kinds}):
                    pws = [pack(lay, bn) for lay in layers]
                    for kk, nn, jbn, kind, m, cfg in kinds:
                        if jbn != bn or f"{k}x{n} bn={bn} {kind} m={m} {cfg}" in failed:
                            continue
                        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                        fn = LAUNCH[kind]
                        us = graph_us([lambda pw=pw: fn(x, pw, None, cfg) for pw in pws], inner=2, replays=7)
                        rec = dict(k=k, n=n, bn=bn, kind=kind, m=m, cfg=asdict(cfg), us=us, fp16_us=base[m],
                                   speedup=base[m] / us)
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        key = (k, n, m, lut)
                        if key not in best or us < best[key]["us"]:
                            best[key] = rec
                del layers, pws
                torch.cuda.empty_cache()
            for m, lut in sorted({(j[4], j[3] in LUT_KINDS) for j in all_jobs}):
                r = best.get((k, n, m, lut))
                if r:
                    print(f"best {k}x{n} M={m}: {r['us']:.1f} us vs fp16 {r['fp16_us']:.1f} ({r['speedup']:.2f}x) "
                          f"bn={r['bn']} {r['kind']} {r['cfg']}", flush=True)
            if args.best:  # after every shape, so a run cut short still leaves its results
                with open(args.best, "w") as f:
                    # load_table reads a code-book layer's config as its kernel's, mode "lut"
                    json.dump([dict(r, bits=4, **(dict(kind=r["kind"].removesuffix("_lut"), mode="lut") if r["kind"] in LUT_KINDS
                                                  else {})) for r in best.values()], f, indent=1)
