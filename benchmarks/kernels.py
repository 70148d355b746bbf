"""Fused dequantize-matmul kernels vs fp16 cuBLAS (F.linear), on a CUDA GPU.

    PYTHONPATH=. python benchmarks/kernels.py                 # the table (what dispatch picks)
    PYTHONPATH=. python benchmarks/kernels.py --tune out.jsonl  # sweep configs, log every timing

Timing: each call runs on its own copy of the weights, rotating over enough copies that they
do not fit in L2 (as in decode, where every layer has its own weights); the calls are
captured in a CUDA graph and replayed, so launch gaps are those of a graphed decode step.
Microseconds per call = median replay time / calls. fp16 is timed the same way, in the same
run. GB/s counts the bytes a call must move (packed weight + scales + zeros + x + y); the
percentage is against the device's HBM bandwidth (3.35 TB/s on an H100 SXM; the measured
device-to-device copy rate is printed too).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lowbit.kernels import KERNELS, load_fast_kernels
from lowbit.nn import QuantLinear

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 1024)]  # (in K, out N): Llama-3-8B
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0}
L2_ROTATION_BYTES = 160 << 20


def peak_gbs() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBS.items() if k in name), float("nan"))


def copy_gbs() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (time.perf_counter() - t) / 1e9


def graph_us(calls: list, inner: int = 4, replays: int = 12) -> float:
    """Median microseconds per call of ``calls`` (zero-argument callables), graphed."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            for c in calls:
                c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / (inner * len(calls)))
    return statistics.median(times)


def copies_for(nbytes: int) -> int:
    return max(2, min(64, math.ceil(L2_ROTATION_BYTES / nbytes)))


def random_quant_linear(k: int, n: int, bits: int, group_size: int, sym: bool, gen: torch.Generator) -> QuantLinear:
    """A QuantLinear with random codes, zeros and scales (speed does not depend on values)."""
    layer = QuantLinear(k, n, bits, group_size, bias=False, device="cuda")
    layer.qweight.copy_(torch.randint(-2**31, 2**31 - 1, layer.qweight.shape, generator=gen, dtype=torch.int64)
                        .to(torch.int32))
    if sym:
        z = 2 ** (bits - 1)
        word = sum(z << (bits * i) for i in range(32 // bits))
        layer.qzeros.fill_(word - 2**32 if word >= 2**31 else word)
    else:
        layer.qzeros.copy_(torch.randint(-2**31, 2**31 - 1, layer.qzeros.shape, generator=gen, dtype=torch.int64)
                           .to(torch.int32))
    layer.scales.copy_((torch.rand(layer.scales.shape, generator=gen) * 2e-3 + 1e-3).half())
    layer.g_idx.copy_(torch.arange(k, dtype=torch.int32) // (k if group_size == -1 else group_size))
    return layer


#: Activation (and baseline weight) dtype of the table; --dtype bf16 sets torch.bfloat16.
DTYPE = torch.float16


def baseline_us(k: int, n: int, m: int, gen: torch.Generator) -> float:
    """cuBLAS F.linear in DTYPE (fp16 unless --dtype bf16), graphed like ours."""
    ws = [torch.randn(n, k, generator=gen).to(DTYPE).cuda() for _ in range(copies_for(n * k * 2))]
    x = torch.randn(m, k, generator=gen).to(DTYPE).cuda()
    return graph_us([lambda w=w: F.linear(x, w) for w in ws])


def call_bytes(layer_bytes: int, k: int, n: int, m: int) -> int:
    return layer_bytes + 2 * m * (k + n)


def random_linear4bit(k: int, n: int, quant_type: str, gen: torch.Generator):
    """A Linear4bit (blocksize 64, double-quantized absmax) with random codes."""
    from lowbit.nn import Linear4bit

    layer = Linear4bit(k, n, bias=False, quant_type=quant_type, compute_dtype=torch.float16, device="cuda")
    layer.weight_4bit.copy_(torch.randint(0, 256, layer.weight_4bit.shape, generator=gen, dtype=torch.uint8))
    layer.absmax.copy_(torch.randint(128, 256, layer.absmax.shape, generator=gen, dtype=torch.uint8))
    layer.nested_absmax.copy_(torch.rand(layer.nested_absmax.shape, generator=gen) * 0.1)
    layer.nested_offset.fill_(0.05)
    return layer


KINDS = {  # name -> (layer factory (k, n, gen), prepare function name)
    "int4 g128 asym": (lambda k, n, g: random_quant_linear(k, n, 4, 128, False, g), "prepare_int_group"),
    "int4 g128 sym": (lambda k, n, g: random_quant_linear(k, n, 4, 128, True, g), "prepare_int_group"),
    "int8 per-channel": (lambda k, n, g: random_quant_linear(k, n, 8, -1, False, g), "prepare_int_group"),
    "nf4 b64 dq": (lambda k, n, g: random_linear4bit(k, n, "nf4", g), "prepare_nf4"),
}


def table(args) -> None:
    from lowbit.kernels.triton import linear

    gen = torch.Generator().manual_seed(0)
    peak = peak_gbs()
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth measured {copy_gbs():.0f} GB/s; "
          f"peak {peak:.0f} GB/s", flush=True)
    print(f"activations: {DTYPE}; the baseline column is cuBLAS F.linear in that dtype")
    print("timing: the baseline and ours alike: each call on its own weight copy, rotating over "
          f">= {L2_ROTATION_BYTES >> 20} MB, calls captured in one CUDA graph, median replay time / calls", flush=True)
    rows, base = [], {}
    kinds = args.kinds or list(KINDS)
    base_col = "bf16 us" if DTYPE == torch.bfloat16 else "fp16 us"
    print(f"{'kind':<18}{'K x N':>12}{'M':>5}{base_col:>9}{'ours us':>9}{'speedup':>9}{'GB/s':>7}{'% peak':>8}")
    for name in kinds:
        make, prepare = KINDS[name]
        for k, n in SHAPES:
            probe = make(k, n, gen)
            nbytes = getattr(linear, prepare)(probe).nbytes()
            layers = [probe] + [make(k, n, gen) for _ in range(copies_for(nbytes) - 1)]
            for m in args.m:
                if (k, n, m) not in base:
                    base[(k, n, m)] = baseline_us(k, n, m, gen)
                x = torch.randn(m, k, generator=gen).to(DTYPE).cuda()
                ours = graph_us([lambda lay=lay: lay(x) for lay in layers])
                gbs = call_bytes(nbytes, k, n, m) / ours / 1e3
                row = dict(kind=name, k=k, n=n, m=m, fp16_us=base[(k, n, m)], ours_us=ours,
                           speedup=base[(k, n, m)] / ours, gbs=gbs, pct=100 * gbs / peak)
                rows.append(row)
                print(f"{name:<18}{f'{k}x{n}':>12}{m:>5}{row['fp16_us']:>9.1f}{ours:>9.1f}{row['speedup']:>8.2f}x"
                      f"{gbs:>7.0f}{row['pct']:>7.0f}%", flush=True)
            del layers, probe
            torch.cuda.empty_cache()
        if name == "int4 g128 asym" and args.dequant_m:
            rows += dequant_rows(args.dequant_m, base, peak, gen)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def dequant_rows(ms: list[int], base: dict, peak: float, gen: torch.Generator) -> list[dict]:
    """int4 g128 asym through the large-M path (dequantize once + cuBLAS), for comparison."""
    from lowbit.kernels.triton import configs, launch, linear

    rows = []
    saved, saved_wgmma = configs.gemm_config, configs.prefers_wgmma
    configs.gemm_config = lambda *a, **k: launch.DequantConfig()
    configs.prefers_wgmma = lambda *a: False
    try:
        for k, n in SHAPES:
            probe = random_quant_linear(k, n, 4, 128, False, gen)
            nbytes = linear.prepare_int_group(probe).nbytes()
            layers = [probe] + [random_quant_linear(k, n, 4, 128, False, gen) for _ in range(copies_for(nbytes) - 1)]
            for m in ms:
                if (k, n, m) not in base:
                    base[(k, n, m)] = baseline_us(k, n, m, gen)
                x = torch.randn(m, k, generator=gen).half().cuda()
                ours = graph_us([lambda lay=lay: lay(x) for lay in layers])
                gbs = call_bytes(nbytes, k, n, m) / ours / 1e3
                row = dict(kind="int4 dequant+cuBLAS", k=k, n=n, m=m, fp16_us=base[(k, n, m)], ours_us=ours,
                           speedup=base[(k, n, m)] / ours, gbs=gbs, pct=100 * gbs / peak)
                rows.append(row)
                print(f"{row['kind']:<18}{f'{k}x{n}':>12}{m:>5}{row['fp16_us']:>9.1f}{ours:>9.1f}"
                      f"{row['speedup']:>8.2f}x{gbs:>7.0f}{row['pct']:>7.0f}%", flush=True)
            del layers, probe
            torch.cuda.empty_cache()
    finally:
        configs.gemm_config, configs.prefers_wgmma = saved, saved_wgmma
    return rows


def shape(text: str) -> tuple[int, int]:
    k, _, n = text.partition("x")
    if not (k.isdigit() and n.isdigit()):
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected KxN, e.g. 4096x6144")
    return int(k), int(n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), help="weight kinds for the table (default: all)")
    p.add_argument("--quick", action="store_true", help="--tune: one shape, fewer configs")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16",
                   help="activation dtype of the table (the cuBLAS baseline runs in it too)")
    p.add_argument("--dequant-m", type=int, nargs="*", default=[],
                   help="also time the dequantize + cuBLAS path at these M (int4 g128 asym)")
    p.add_argument("--tune", metavar="JSONL", help="sweep kernel configs instead, one JSON line per timing")
    p.add_argument("--only", nargs="+", choices=["gemv", "half2", "half2_lut", "mma16", "gemm", "wgmma", "wgmma_lut"],
                   help="--tune: only these kernels (*_lut: on an NF4 layer)")
    p.add_argument("--tune-m", type=int, nargs="+", metavar="M", help="--tune: only the jobs at these M")
    p.add_argument("--shapes", nargs="+", type=shape, metavar="KxN",
                   help="--tune: these (in x out) shapes instead of Llama-3-8B's four, e.g. 4096x6144")
    p.add_argument("--best", metavar="JSON", help="with --tune: write the best config per shape and M here")
    p.add_argument("--configs", metavar="JSON", nargs="+",
                   help="use these tuned configs (--best files) on top of configs.py")
    p.add_argument("--no-wgmma", action="store_true", help="leave wgmma out of dispatch (the kernels before it)")
    p.add_argument("--mma16-max-m", type=int, metavar="M",
                   help="run the mma16 kernel up to this M (default: configs.MMA16_MAX_M)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    global DTYPE
    DTYPE = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    load_fast_kernels()
    if args.configs:
        from lowbit.kernels.triton.configs import load_table

        for path in args.configs:
            load_table(path)
    if args.no_wgmma:
        from lowbit.kernels.triton import launch

        launch.disable_wgmma()
    if args.mma16_max_m is not None:
        from lowbit.kernels.triton import configs

        configs.MMA16_MAX_M = args.mma16_max_m
    if not KERNELS["int_group"]:
        print("the Triton kernels are not available (pip install triton)", file=sys.stderr)
        return 2
    if args.tune:
        from tune_kernels import tune  # benchmarks/tune_kernels.py

        tune(args)
    else:
        table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
