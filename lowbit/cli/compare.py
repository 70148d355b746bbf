"""Quantize a base model with several methods (or take existing checkpoints), evaluate them all
in one run (perplexity on the same windows, speed, size, peak memory) and write report.md,
report.json and report.png. Methods this build does not implement are listed as not run."""
from __future__ import annotations

import argparse

from .evaluate import add_dataset_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="unquantized base model: folder, .gguf file, hub id or 'demo'")
    p.add_argument("--methods", default="fp16,int8,nf4,rtn,gptq,awq",
                   help="comma-separated: fp16 (the base, baseline), rtn, gptq, awq, nf4, fp4, int8, or checkpoint "
                        "folders (default: %(default)s)")
    p.add_argument("--bits", type=int, default=4, help="bits for rtn/gptq/awq (default: 4)")
    p.add_argument("--group-size", type=int, default=128, help="group size for rtn/gptq/awq (default: 128)")
    add_dataset_arguments(p)
    p.add_argument("--output-dir", default="./outputs/compare", help="report folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the quantized checkpoints under OUTPUT_DIR/checkpoints (default: temporary)")
    p.add_argument("--batch-size", type=int, default=1, help="bench batch size (default: 1)")
    p.add_argument("--prompt-len", type=int, default=128, help="bench prompt tokens (default: 128)")
    p.add_argument("--new-tokens", type=int, default=16, help="bench generated tokens (default: 16)")
    p.add_argument("--repeats", type=int, default=3, help="bench timed runs per model (default: 3)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float parts' dtype (default: float32 on CPU, float16 on CUDA)")
    p.add_argument("--calibration-dataset", default=None, help="gptq/awq calibration data (default: lowbit's)")
    p.add_argument("--calibration-samples", type=int, default=128, help="gptq/awq calibration windows (default: 128)")
    p.add_argument("--calibration-seq-len", type=int, default=512, help="tokens per calibration window (default: 512)")


def run(args: argparse.Namespace) -> int:
    import logging
    import tempfile
    from pathlib import Path

    from ..config import CalibrationConfig
    from ..evaluate.compare import compare
    from ..evaluate.report import markdown_table, notes, write_report
    from ..outdir import check_output_dir

    out = Path(args.output_dir)
    _check_writable(out, args.overwrite, check_output_dir)
    calib = CalibrationConfig(dataset=args.calibration_dataset, n_samples=args.calibration_samples,
                              seq_len=args.calibration_seq_len)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.ckpt-", dir=out.resolve().parent) as work:
        report = compare(args.base, args.methods, bits=args.bits, group_size=args.group_size, dataset=args.dataset,
                         split=args.split, data_dir=args.data_dir, seq_len=args.seq_len, max_windows=args.max_windows,
                         batch_size=args.batch_size, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                         repeats=args.repeats, device=args.device, dtype=args.dtype, calibration=calib,
                         checkpoint_dir=work, progress=not args.quiet)
        paths = write_report(report, out, overwrite=args.overwrite)
        if args.keep_checkpoints and any(Path(work).iterdir()):
            Path(work).rename(out / "checkpoints")
            Path(work).mkdir()  # TemporaryDirectory cleans up the (now empty) path it made
    print(markdown_table(report))
    for n in notes(report):
        print(n)
    for s in report["skipped"]:
        print(f"not run: {s['label']}: {s['reason']}")
    logging.getLogger(__name__).info("wrote %s, %s, %s", *paths.values())
    print(f"report: {paths['md']} {paths['json']} {paths['png']}")
    return 0


def _check_writable(out, overwrite: bool, check_output_dir) -> None:
    """A folder we cannot create or write fails now, not after an hour of quantizing."""
    import os
    import tempfile

    from ..errors import LowbitError

    try:
        check_output_dir(out, overwrite)
        parent = out.resolve().parent
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=f".{out.name}.probe-")
        probe.close()
    except OSError as e:
        raise LowbitError(f"cannot write the report to {out} ({e.strerror or e}): choose a writable --output-dir") \
            from None
    if not os.access(parent, os.W_OK):
        raise LowbitError(f"cannot write to {parent}: choose a writable --output-dir")
