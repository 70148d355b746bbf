"""Convert a quantized checkpoint to another format: lowbit, gptq (vLLM --quantization gptq,
transformers), awq (AutoAWQ GEMM: vLLM --quantization awq) or compressed-tensors (pack-quantized:
vLLM and transformers natively). Weights move bit for bit; what a format cannot hold is refused."""
from __future__ import annotations

import argparse

FORMAT_CHOICES = ["lowbit", "gptq", "awq", "compressed-tensors"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="quantized checkpoint folder (any format lowbit reads)")
    p.add_argument("--format", required=True, choices=FORMAT_CHOICES, help="layout to write")
    p.add_argument("--output-dir", "--output_dir", required=True, help="where the converted checkpoint goes")
    p.add_argument("--checkpoint-format", default="auto", choices=["auto", "gptq", "gptq_v2"],
                   help="gptq only: zero-point convention; auto writes v1 (gptq) unless an asymmetric zero "
                        "point is 0, which only gptq_v2 stores (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..export.convert import export_checkpoint

    options = {"checkpoint_format": args.checkpoint_format} if args.format == "gptq" else {}
    report = export_checkpoint(args.src, args.output_dir, args.format, overwrite=args.overwrite, **options)
    written = report["export"]["quantization_config"]
    bits, group_size = _bits_and_group(written)
    print(f"wrote {args.format} checkpoint (w{bits} group size {group_size}) to {args.output_dir}: "
          f"{report['bytes_on_disk'] / 2**20:.1f} MiB")
    return 0


def _bits_and_group(qc: dict) -> tuple:
    if "config_groups" in qc:  # compressed-tensors
        weights = next(iter(qc["config_groups"].values()))["weights"]
        return weights.get("num_bits"), weights.get("group_size") or -1
    return qc.get("bits"), qc.get("group_size")
