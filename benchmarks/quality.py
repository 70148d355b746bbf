"""Quality of calibrated quantization on the demo model: perplexity, size and time per config.

    python benchmarks/quality.py                       # the README table (12 windows)
    python benchmarks/quality.py --windows 0           # the whole test file (slow on 2 cores)
    python benchmarks/quality.py --configs float rtn:4:64 gptq:4:64:act awq:4:64

Each config is ``float`` or ``method:bits:group[:flag...]`` with flags ``act`` (act-order),
``static`` (static groups), ``nots`` (not true-sequential), ``sym`` / ``asym``. A config is
quantized through the public path (``lowbit.quantize.quantize``: load, calibrate, quantize,
save) on CPU, loaded back with ``lowbit.load`` and evaluated with
``lowbit.evaluate.perplexity`` (GPTQ protocol: non-overlapping windows of 2048 tokens of
WikiText-2 test, the first ``--windows`` of them). Calibration: ``--samples`` x ``--seq-len``
tokens of WikiText-2 valid, seed 0. Size: weights with float parts counted at 16 bits
(``storage_bytes``). Results are cached in ``<out>/results.json`` (rerun = resume); the
table is printed as markdown.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CONFIGS = [
    "float", "rtn:4:64", "rtn:4:64:asym", "gptq:4:64:act", "awq:4:64",
    "rtn:3:64", "rtn:3:64:asym", "gptq:3:64:act", "awq:3:64",
    "rtn:4:128", "rtn:4:128:asym", "gptq:4:128:act", "awq:4:128",
    "rtn:8:64", "rtn:8:64:asym", "gptq:8:64:act", "awq:8:64",
]


def parse(config: str) -> dict:
    if config == "float":
        return {"method": "float"}
    method, bits, group, *flags = config.split(":")
    spec = {"method": method, "bits": int(bits), "group_size": int(group)}
    for f in flags:
        spec.update({"act": {"act_order": True}, "static": {"static_groups": True},
                     "nots": {"true_sequential": False}, "sym": {"sym": True}, "asym": {"sym": False}}[f])
    return spec


def run_config(config: str, args) -> dict:
    import lowbit
    from lowbit.config import CalibrationConfig, QuantConfig
    from lowbit.evaluate.memory import storage_bytes
    from lowbit.evaluate.perplexity import perplexity
    from lowbit.quantize import quantize

    spec = parse(config)
    seconds = cpu_seconds = None
    if spec["method"] == "float":
        model = lowbit.load("demo", device="cpu", dtype=torch.float32)
    else:
        cfg = QuantConfig(**spec)
        calib = CalibrationConfig(dataset=str(args.calib), n_samples=args.samples, seq_len=args.seq_len, seed=0)
        folder = args.out / config.replace(":", "-")
        cpu0 = time.process_time()
        report = quantize("demo", folder, cfg, calib, overwrite=True, progress=not args.quiet, device="cpu")
        seconds = report["seconds"]["quantize"]
        cpu_seconds = time.process_time() - cpu0  # all threads: on an idle machine wall ~ this / threads
        model = lowbit.load(folder, device="cpu", dtype=torch.float32)
    windows = args.windows or None
    res = perplexity(model, model.tokenizer, args.test, seq_len=2048, max_windows=windows, progress=not args.quiet)
    return {"config": config, **spec, "perplexity": res.perplexity, "windows": res.windows,
            "tokens": res.tokens, "size_mib": storage_bytes(model) / 2**20, "quantize_seconds": seconds,
            "quantize_cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0]}


def table(results: dict, configs: list[str]) -> str:
    """Markdown; "gap" = (P - P_float) / (P_rtn - P_float) against RTN of the same bits, group
    and zero-point setting: 0 is the float model, 1 is round-to-nearest."""
    from lowbit.config import DEFAULT_SYM

    rows = [results[c] for c in configs if c in results]
    p0 = next((r["perplexity"] for r in rows if r["method"] == "float"), None)

    def sym(r):
        return r.get("sym", DEFAULT_SYM[r["method"]])

    rtn = {(r["bits"], r["group_size"], sym(r)): r["perplexity"] for r in rows if r["method"] == "rtn"}
    lines = ["| method | bits | group | zero point | perplexity | gap vs RTN | size (MiB) | quantize time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "float":
            lines.append(f"| float | 16 | - | - | {r['perplexity']:.3f} | 0 | {r['size_mib']:.1f} | - |")
            continue
        flags = [k for k, on in (("act-order", r.get("act_order")), ("static groups", r.get("static_groups")),
                                 ("not true-sequential", r.get("true_sequential") is False)) if on]
        name = r["method"] + (f" ({', '.join(flags)})" if flags else "")
        base = rtn.get((r["bits"], r["group_size"], sym(r)))
        gap = "-" if p0 is None or base is None or base == p0 else f"{(r['perplexity'] - p0) / (base - p0):.2f}"
        lines.append(f"| {name} | {r['bits']} | {r['group_size']} | {'no' if sym(r) else 'yes'} | "
                     f"{r['perplexity']:.3f} | {gap} | {r['size_mib']:.1f} | {r['quantize_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--windows", type=int, default=12, help="first N windows of the test file; 0 = all")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib", type=Path, default=DATA / "wikitext-2-valid.txt")
    p.add_argument("--test", type=Path, default=DATA / "wikitext-2-test.txt")
    p.add_argument("--out", type=Path, default=Path("outputs/quality"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    key = f"w{args.windows}-n{args.samples}x{args.seq_len}"
    done = results.setdefault(key, {})
    for config in args.configs:
        if config in done:
            continue
        t0 = time.perf_counter()
        done[config] = run_config(config, args)
        logging.warning("%s: perplexity %.3f (%.0f s)", config, done[config]["perplexity"], time.perf_counter() - t0)
        cache.write_text(json.dumps(results, indent=2))
    print(f"WikiText-2 test, seq 2048, {'all' if not args.windows else f'first {args.windows}'} windows; "
          f"calibration {args.samples} x {args.seq_len} tokens of WikiText-2 valid, seed 0\n")
    print(table(done, args.configs))


if __name__ == "__main__":
    main()
