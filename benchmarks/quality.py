"""Quality of calibrated quantization on the demo model: perplexity, size and time per config.

    python benchmarks/quality.py                       # the README table (12 windows)
    python benchmarks/quality.py --windows 12 0        # the first 12 windows and the whole test file
    python benchmarks/quality.py --device cuda --windows 12 0   # the same on a GPU (minutes)
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
                     "nots": {"true_sequential": False}, "sym": {"sym": True}, "asym": {"sym": False},
                     "clip": {"clip_search": True}, "noclip": {"clip_search": False}}[f])
    return spec


def run_config(config: str, args) -> dict[int, dict]:
    """Quantize ``config`` once, evaluate it on each of ``args.windows``: {windows: row}."""
    import lowbit
    from lowbit.config import CalibrationConfig, QuantConfig
    from lowbit.evaluate.memory import storage_bytes
    from lowbit.evaluate.perplexity import perplexity
    from lowbit.quantize import quantize

    spec = parse(config)
    seconds = cpu_seconds = None
    if spec["method"] == "float":
        model = lowbit.load("demo", device=args.device, dtype=torch.float32)
    else:
        cfg = QuantConfig(**spec)
        calib = CalibrationConfig(dataset=str(args.calib), n_samples=args.samples, seq_len=args.seq_len, seed=0)
        folder = args.out / config.replace(":", "-")
        cpu0 = time.process_time()
        report = quantize("demo", folder, cfg, calib, overwrite=True, progress=not args.quiet, device=args.device)
        seconds = report["seconds"]["quantize"]
        cpu_seconds = time.process_time() - cpu0  # all threads: on an idle machine wall ~ this / threads
        model = lowbit.load(folder, device=args.device, dtype=torch.float32)
    rows = {}
    for windows in args.windows:
        res = perplexity(model, model.tokenizer, args.test, seq_len=2048, max_windows=windows or None,
                         progress=not args.quiet)
        rows[windows] = {"config": config, **spec, "perplexity": res.perplexity, "windows": res.windows,
                         "tokens": res.tokens, "size_mib": storage_bytes(model) / 2**20,
                         "quantize_seconds": seconds, "quantize_cpu_seconds": cpu_seconds,
                         "device": _device_name(args.device), "threads": torch.get_num_threads(),
                         "load_average": os.getloadavg()[0]}
    return rows


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def table(results: dict, configs: list[str]) -> str:
    """Markdown; "gap" = (P - P_float) / (P_rtn - P_float) against RTN of the same bits, group
    and zero-point setting: 0 is the float model, 1 is round-to-nearest."""
    from lowbit.config import DEFAULT_SYM

    rows = [results[c] for c in configs if c in results]
    p0 = next((r["perplexity"] for r in rows if r["method"] == "float"), None)

    def sym(r):
        return r.get("sym", DEFAULT_SYM[r["method"]])

    rtn = {(r["bits"], r["group_size"], sym(r)): r["perplexity"] for r in rows
           if r["method"] == "rtn" and not r.get("clip_search")}
    lines = ["| method | bits | group | zero point | perplexity | gap vs RTN | size (MiB) | quantize time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "float":
            lines.append(f"| float | 16 | - | - | {r['perplexity']:.3f} | 0 | {r['size_mib']:.1f} | - |")
            continue
        flags = [k for k, on in (("act-order", r.get("act_order")), ("static groups", r.get("static_groups")),
                                 ("clip search", r.get("clip_search")),
                                 ("not true-sequential", r.get("true_sequential") is False)) if on]
        name = r["method"] + (f" ({', '.join(flags)})" if flags else "")
        base = rtn.get((r["bits"], r["group_size"], sym(r)))
        # no gap to close when RTN is within 1% of float (8-bit): the ratio would be noise
        gap = ("-" if p0 is None or base is None or abs(base - p0) < 0.01 * p0
               else f"{(r['perplexity'] - p0) / (base - p0):.2f}")
        lines.append(f"| {name} | {r['bits']} | {r['group_size']} | {'no' if sym(r) else 'yes'} | "
                     f"{r['perplexity']:.3f} | {gap} | {r['size_mib']:.1f} | {r['quantize_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument("--windows", type=int, nargs="+", default=[12],
                   help="evaluate on the first N windows of the test file; 0 = all; several values: "
                        "each quantized model is evaluated on each (default: 12)")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib", type=Path, default=DATA / "wikitext-2-valid.txt")
    p.add_argument("--test", type=Path, default=DATA / "wikitext-2-test.txt")
    p.add_argument("--out", type=Path, default=Path("outputs/quality"))
    p.add_argument("--device", default="cpu", help="where to calibrate, quantize and evaluate (cpu, cuda)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    keys = {w: f"w{w}-n{args.samples}x{args.seq_len}" for w in args.windows}
    for config in args.configs:
        if all(config in results.get(k, {}) for k in keys.values()):
            continue
        t0 = time.perf_counter()
        rows = run_config(config, args)
        for w, row in rows.items():
            results.setdefault(keys[w], {})[config] = row
        logging.warning("%s: perplexity %s (%.0f s)", config,
                        ", ".join(f"{r['perplexity']:.3f} on {r['windows']} windows" for r in rows.values()),
                        time.perf_counter() - t0)
        cache.write_text(json.dumps(results, indent=2))
    for w, key in keys.items():
        done = results[key]
        device = next(iter(done.values())).get("device", args.device) if done else args.device
        print(f"WikiText-2 test, seq 2048, {'all' if not w else f'first {w}'} windows "
              f"({next(iter(done.values()))['tokens'] if done else '?'} scored tokens); calibration "
              f"{args.samples} x {args.seq_len} tokens of WikiText-2 valid, seed 0; device: {device}\n")
        print(table(done, args.configs))
        print()


if __name__ == "__main__":
    main()
