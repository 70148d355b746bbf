"""Perplexity of a model (the GPTQ paper's protocol by default), and optionally lm-eval tasks.

Default protocol: the dataset's texts joined with "\\n\\n", tokenized once, non-overlapping
windows of --seq-len tokens, mean NLL over all predicted tokens. --stride S slides windows by
S tokens instead, scoring only the tokens new to each window."""
from __future__ import annotations

import argparse
import json


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, lowbit checkpoint, .gguf file, hub id or 'demo'")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="dtype of the float parts: float32, float16, bfloat16 "
                                                 "(default: float32 on CPU, float16 on CUDA)")


def add_dataset_arguments(p: argparse.ArgumentParser, default: str | None = "wikitext2") -> None:
    p.add_argument("--dataset", default=default,
                   help="wikitext2, pydocs (Python docs, offline) or a .txt/.jsonl file"
                        + (f" (default: {default})" if default else " (default: wikitext2, or none with --tasks)"))
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--data-dir", default=None,
                   help="folder with wikitext-2-{split}.txt for offline use (default: $LOWBIT_DATA_DIR, else the hub)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first K windows")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_dataset_arguments(p, default=None)
    p.add_argument("--stride", type=int, default=None,
                   help="sliding windows moved by S tokens, scoring only new tokens (default: non-overlapping)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy "
                                                 "(needs pip install 'lowbit[tasks]')")
    p.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task (or a fraction)")
    p.add_argument("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    from ..evaluate.perplexity import check_seq_len, perplexity
    from ..evaluate.tasks import _import_harness, parse_tasks, run_tasks
    from ..models.load import load

    tasks = parse_tasks(args.tasks)
    dataset = args.dataset or (None if tasks else "wikitext2")
    if tasks:
        _import_harness()  # fail before loading the model
    model = load(args.model, device=args.device, dtype=args.dtype)
    out: dict = {"model": args.model}
    if dataset is not None:
        check_seq_len(model, args.seq_len, args.stride)
        r = perplexity(model, model.tokenizer, _dataset_arg(dataset), seq_len=args.seq_len, stride=args.stride,
                       max_windows=args.max_windows, progress=not args.quiet, batch_size=args.batch_size,
                       split=args.split, data_dir=args.data_dir)
        out.update(dataset=dataset, split=args.split, **r.to_dict())
        if not args.json:
            mode = f"stride {r.stride}" if r.stride else "non-overlapping"
            print(f"perplexity {r.perplexity:.4f} on {dataset} ({args.split}): {r.windows} windows x {r.seq_len} "
                  f"tokens ({mode}), {r.tokens} predicted tokens, nll {r.nll:.4f}, {r.seconds:.1f} s")
    if tasks:
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        out["tasks"] = run_tasks(model, model.tokenizer, tasks, batch_size=args.batch_size, limit=limit,
                                 num_fewshot=args.num_fewshot)
        if not args.json:
            for task, metrics in out["tasks"].items():
                print(f"{task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    if args.json:
        print(json.dumps(out))
    return 0


def _dataset_arg(dataset: str):
    """A built-in name stays a name; anything else is a file path (never literal text)."""
    from pathlib import Path

    from ..evaluate.texts import is_dataset_name

    return dataset if is_dataset_name(dataset) else Path(dataset)
