"""Merge a LoRA adapter (peft format, e.g. from `lowbit train`) into its float base and write
a plain Hugging Face model folder, ready for `lowbit quantize`: W' = W + B @ A * alpha / r,
summed in float32."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", "--model-path", "--model_path", "--base-model", dest="base", required=True,
                   help="the unquantized base model: folder, .gguf file, hub id or 'demo'")
    p.add_argument("--adapter", "--adapter-path", "--lora-path", dest="adapter", required=True,
                   help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--output-dir", "--output_dir", default="./outputs/merged",
                   help="where the merged model goes (default: %(default)s)")
    p.add_argument("--dtype", default="auto",
                   help="dtype of the saved weights: float32, bfloat16, float16 (default: the base's)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..train.merge import merge

    report = merge(args.base, args.adapter, args.output_dir, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged {report['layers']} LoRA layers into {args.base} ({report['dtype']}) in "
          f"{report['seconds']:.1f} s; written to {args.output_dir}")
    return 0
