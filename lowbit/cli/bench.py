"""Speed and memory of greedy generation: time to first token, prefill and decode tokens/s
(median [min-max] of repeated runs after a warm-up), weight bytes and peak memory (CUDA max
allocated; CPU peak RSS of the process)."""
from __future__ import annotations

import argparse
import json

from .evaluate import add_model_arguments


def parse_batch_sizes(spec: str) -> list[int]:
    from ..errors import LowbitError

    try:
        sizes = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise LowbitError(f"--batch-sizes {spec!r} must be comma-separated numbers, e.g. 1,8") from None
    if not sizes or any(b < 1 for b in sizes):
        raise LowbitError(f"--batch-sizes {spec!r} must be positive numbers, e.g. 1,8")
    return sizes


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (default: 512)")
    p.add_argument("--new-tokens", type=int, default=128, help="generated tokens (default: 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    p.add_argument("--static-decode", action="store_true",
                   help="generate through lowbit's static decoder: static KV cache, one CUDA graph per decode step, "
                        "merged q|k|v and gate|up (held a second time) and fused kernels; llama, mistral, qwen2, "
                        "qwen3 models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..evaluate.speed import bench, check_bench_args, format_bench
    from ..models.load import load

    sizes = parse_batch_sizes(args.batch_sizes)
    model = load(args.model, device=args.device, dtype=args.dtype)
    check_bench_args(model, sizes, args.prompt_len, args.new_tokens, args.repeats)
    results = bench(model, sizes, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                    warmup=args.warmup, progress=not args.quiet, static=args.static_decode)
    if args.json:
        print(json.dumps({"model": args.model, "results": [r.to_dict() for r in results]}))
    else:
        print(format_bench(results))
    return 0
