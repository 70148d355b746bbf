"""Quantize a model and write a checkpoint (safetensors, config.json with quantization_config,
tokenizer files, lowbit_report.json). Flags follow the usual AWQ/GPTQ quantize scripts."""
from __future__ import annotations

import argparse

from ..config import METHODS, CalibrationConfig, QuantConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", "--model_path", default="./outputs/merged",
                   help="model folder, .gguf file, hub id or 'demo' (default: %(default)s)")
    p.add_argument("--output-dir", "--output_dir", default="./outputs/quantized",
                   help="where the checkpoint goes (default: %(default)s)")
    p.add_argument("--quantization-type", "--quantization_type", "--method", default="awq", choices=METHODS,
                   help="quantization method (default: %(default)s)")
    p.add_argument("--bits", "--w_bit", "--wbits", type=int, default=4, help="bits per weight: 2, 3, 4 or 8 (default: 4)")
    p.add_argument("--group-size", "--group_size", "--q_group_size", type=int, default=128,
                   help="columns per scale, -1 for per-channel; a size that does not divide the input width "
                        "leaves a ragged last group (default: 128)")
    p.add_argument("--sym", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric quantization (default: on for rtn/gptq, off for awq)")
    p.add_argument("--zero-point", "--zero_point", dest="sym", action="store_false",
                   help="asymmetric quantization with a zero point (same as --no-sym)")
    p.add_argument("--desc-act", "--desc_act", "--act-order", dest="act_order", action="store_true",
                   help="GPTQ: quantize columns in order of decreasing activation (act-order)")
    p.add_argument("--damp-percent", "--damp_percent", type=float, default=0.01,
                   help="GPTQ: Hessian dampening as a fraction of its mean diagonal (default: 0.01)")
    p.add_argument("--static-groups", action="store_true", help="GPTQ: fix group parameters before act-order")
    p.add_argument("--clip-search", action=argparse.BooleanOptionalAction, default=None,
                   help="RTN/GPTQ: search a clipping ratio per group that minimizes the weight error "
                        "(default: on for gptq, off for rtn)")
    p.add_argument("--no-true-sequential", dest="true_sequential", action="store_false",
                   help="GPTQ: quantize a block's layers from the same inputs instead of in order")
    p.add_argument("--calibration-samples", "--nsamples", type=int, default=512,
                   help="calibration windows (default: 512)")
    p.add_argument("--dataset-name", "--dataset_name", "--dataset", default=None,
                   help="calibration data: local .txt/.jsonl/.parquet, a hub dataset id, or a built-in name")
    p.add_argument("--dataset-split", "--dataset_split", default="train", help="dataset split (default: train)")
    p.add_argument("--text-column", default=None, help="column holding the text (default: guessed)")
    p.add_argument("--max-seq-length", "--max_seq_length", "--seqlen", type=int, default=1500,
                   help="tokens per calibration window (default: 1500)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling calibration windows (default: 0)")
    p.add_argument("--device", default=None, help="where blocks are quantized: cuda or cpu (default: cuda if available)")
    p.add_argument("--format", default=None, choices=["lowbit", "gptq", "awq", "compressed-tensors"],
                   help="checkpoint layout (default: gptq for rtn/gptq, awq for awq, lowbit for nf4/fp4/int8)")
    p.add_argument("--quantize-lm-head", action="store_true", help="also quantize lm_head")
    p.add_argument("--skip-modules", nargs="*", default=[], metavar="NAME",
                   help="layers to keep in 16-bit (full names or suffixes such as mlp.down_proj)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                   help="dtype of the parts kept in float (embeddings, norms, lm_head); auto keeps the source's")
    p.add_argument("--blocksize", "--bnb-4bit-blocksize", type=int, default=64,
                   help="nf4/fp4: weights per absmax block (default: 64)")
    p.add_argument("--double-quant", "--bnb-4bit-use-double-quant", action=argparse.BooleanOptionalAction,
                   default=True, help="nf4/fp4: quantize the absmax values again to 8 bits (default: on)")
    p.add_argument("--compute-dtype", "--bnb-4bit-compute-dtype", default="float32",
                   choices=["float32", "float16", "bfloat16"], help="nf4/fp4/int8: matmul dtype (default: float32)")
    p.add_argument("--llm-int8-threshold", type=float, default=6.0,
                   help="int8: inputs above this magnitude take the 16-bit path; 0 disables it (default: 6.0)")
    p.add_argument("--int8-act-block-size", "--llm-int8-act-block-size", type=int, default=64,
                   help="int8: activation columns per int8 scale, per token (default: 64); "
                        "0: one scale per token, as in the LLM.int8 paper")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args: argparse.Namespace) -> int:
    from ..export import check_format, default_format
    from ..models.load import parse_dtype
    from ..quantize import quantize

    cfg = QuantConfig(
        method=args.quantization_type, bits=args.bits, group_size=args.group_size, sym=args.sym,
        act_order=args.act_order, true_sequential=args.true_sequential, damp_percent=args.damp_percent,
        static_groups=args.static_groups, quantize_lm_head=args.quantize_lm_head,
        **({} if args.clip_search is None else {"clip_search": args.clip_search}),
        modules_to_not_convert=args.skip_modules, format=args.format or default_format(args.quantization_type),
        blocksize=args.blocksize,
        double_quant=args.double_quant, compute_dtype=args.compute_dtype, int8_threshold=args.llm_int8_threshold,
        int8_act_block_size=args.int8_act_block_size,
    )
    check_format(cfg.format, cfg.method)
    calib = CalibrationConfig(
        dataset=args.dataset_name, split=args.dataset_split, n_samples=args.calibration_samples,
        seq_len=args.max_seq_length, seed=args.seed, text_column=args.text_column,
    )
    report = quantize(args.model_path, args.output_dir, cfg, calib if cfg.method in ("gptq", "awq") else None,
                      overwrite=args.overwrite, progress=not args.quiet, dtype=parse_dtype(args.dtype),
                      device=args.device)
    n = len(report["layers"])
    what = {"nf4": f"nf4 block {cfg.blocksize}{' +dq' if cfg.double_quant else ''}", "int8": "int8",
            "fp4": f"fp4 block {cfg.blocksize}{' +dq' if cfg.double_quant else ''}"}.get(
        cfg.method, f"{cfg.method} w{cfg.bits} g{cfg.group_size}")
    print(f"quantized {n} layers ({what}) in {report['seconds']['total']:.1f} s; "
          f"mean relative weight error {report['mean_rel_weight_error']:.4f}; "
          f"{report['bytes_on_disk'] / 2**20:.1f} MiB written to {args.output_dir}")
    return 0
