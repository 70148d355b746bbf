"""Quantize a base model with several methods, evaluate every result in one process, report.

    compare(base, methods=("fp16", "rtn"), bits=4, group_size=128, dataset="wikitext2", ...)
        -> dict (the report; ``write_report`` renders report.md / report.json / report.png)

``methods``: names from ``lowbit.config.METHODS`` plus ``fp16`` (the unquantized base, the
baseline), or paths of existing checkpoints (labelled by folder name). Each method goes
through lowbit's own API: ``lowbit.quantize.quantize(base, folder, QuantConfig(...))``
writes a checkpoint, ``lowbit.load(folder)`` loads it as users would. A method this build
does not implement (or that fails with a LowbitError) is listed under ``skipped`` with its
reason: it gets no row.

Every model is measured the same way, in this one process, in the order given (baseline
first): perplexity on the same token windows (the text is tokenized once, with the first
model's tokenizer), then ``bench`` (greedy generation, median [min-max] of ``repeats`` runs).
Ratios are against the baseline row: ``speedup_*`` = tok/s / baseline tok/s, ``size_ratio``
= baseline size / size, ``quality_pct`` = 100 * baseline perplexity / perplexity.

Sizes (``weight_bytes``) count floating-point tensors at 16 bits, as a 16-bit checkpoint
stores them, whatever dtype they run in (float32 on CPU); ``memory_bytes`` is the footprint as
loaded. ``peak_bytes`` is the peak during generation (``bench``), ``eval_peak_bytes`` the peak
while loading and computing perplexity.
"""
from __future__ import annotations

import ctypes
import gc
import logging
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import METHODS, CalibrationConfig, QuantConfig
from ..errors import LowbitError
from .memory import PeakMemory, memory_footprint, storage_bytes
from .perplexity import check_seq_len, perplexity, plan_windows, token_ids
from .speed import bench, check_bench_args_static

log = logging.getLogger(__name__)

BASELINE = "fp16"
#: Methods whose bit width is fixed by the format, not by --bits.
FIXED_BITS = {"nf4": 4, "fp4": 4, "int8": 8}
CALIBRATED = ("gptq", "awq")


def parse_methods(spec: "str | list[str]") -> list[str]:
    """Method names / checkpoint paths, baseline first, duplicates dropped."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise LowbitError("--methods is empty: name some of fp16," + ",".join(METHODS) + " or checkpoint folders")
    for item in items:
        if item != BASELINE and item not in METHODS and not Path(item).expanduser().is_dir():
            raise LowbitError(f"--methods entry '{item}' is neither {BASELINE}, a method "
                              f"({', '.join(METHODS)}) nor an existing checkpoint folder")
    unique = list(dict.fromkeys(items))
    return sorted(unique, key=lambda m: m != BASELINE)


def quant_config(method: str, bits: int, group_size: int) -> QuantConfig:
    return QuantConfig(method=method, bits=FIXED_BITS.get(method, bits), group_size=group_size)


def _checkpoint_bits(folder: Path) -> int | None:
    from ..models.checkpoint import read_config

    qc = read_config(folder).get("quantization_config") or {}
    bits = qc.get("bits") or qc.get("w_bit")
    return bits if isinstance(bits, int) else None


def _release() -> None:
    """Give a dropped model's memory back before the next one is measured."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # glibc keeps freed heap pages; without this the next row's peak RSS would include them.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the next peak may include freed memory


def _quantize(base, label: str, method: str, args: dict, work: Path, progress: bool) -> tuple[Path, dict]:
    """Checkpoint folder of ``base`` quantized with ``method`` (through lowbit.quantize.quantize)."""
    from ..quantize import quantize

    cfg = quant_config(method, args["bits"], args["group_size"])
    calib = args["calibration"] if method in CALIBRATED else None
    out = work / label
    t0 = time.perf_counter()
    report = quantize(base, out, cfg, calib, overwrite=True, progress=progress)
    info = {"quantize_seconds": round(time.perf_counter() - t0, 2), "bits": cfg.bits,
            "group_size": cfg.group_size, "bytes_on_disk": report.get("bytes_on_disk"),
            "mean_rel_weight_error": report.get("mean_rel_weight_error")}
    return out, info


def _measure(source, label: str, ids_state: dict, args: dict, progress: bool) -> dict:
    """Load ``source``, compute its perplexity and speed; the row of the report (no ratios)."""
    from ..models.load import load

    with PeakMemory(args["device"] or ("cuda" if torch.cuda.is_available() else "cpu")) as eval_peak:
        model = load(source, device=args["device"], dtype=args["dtype"])
        check_seq_len(model, args["seq_len"])
        if ids_state.get("ids") is None:
            _tokenize(model.tokenizer, model.config.vocab_size, ids_state, args)
        elif model.config.vocab_size != ids_state["vocab"]:
            raise LowbitError(f"{label} has a vocabulary of {model.config.vocab_size}, the base "
                              f"{ids_state['vocab']}: compare checkpoints of the same base model")
        ppl = perplexity(model, None, ids_state["ids"], seq_len=args["seq_len"], max_windows=args["max_windows"],
                         progress=progress)
    speed = bench(model, [args["batch_size"]], prompt_len=args["prompt_len"], new_tokens=args["new_tokens"],
                  repeats=args["repeats"], warmup=args["warmup"], progress=progress)[0]
    row = {"label": label, "perplexity": ppl.perplexity, "nll": ppl.nll, "tokens": ppl.tokens,
           "windows": ppl.windows, "ppl_seconds": round(ppl.seconds, 2),
           "weight_bytes": storage_bytes(model), "memory_bytes": memory_footprint(model),
           "peak_bytes": speed.peak_bytes, "peak_kind": speed.peak_kind, "eval_peak_bytes": eval_peak.bytes,
           "bench": speed.to_dict(), "device": speed.device, "dtype": speed.dtype}
    del model
    _release()
    return row


def _tokenize(tokenizer, vocab: int, ids_state: dict, args: dict) -> None:
    """Tokenize the evaluation text once; refuse a text shorter than one window."""
    ids = token_ids(tokenizer, args["text"], split=args["split"], data_dir=args["data_dir"])
    if not plan_windows(ids.numel(), args["seq_len"]):
        raise LowbitError(f"the dataset has {ids.numel()} tokens, fewer than one window of "
                          f"{args['seq_len']}: pass a smaller --seq-len or a longer dataset")
    ids_state.update(ids=ids, vocab=vocab)


def _prepare(base, ids_state: dict, args: dict) -> None:
    """Checks that need only the base's config and tokenizer, before any slow work (folders only;
    a .gguf or hub base is checked when its model is loaded)."""
    from ..models import checkpoint, hf
    from ..models.load import resolve_source

    kind, where = resolve_source(base)
    if kind not in ("folder", "demo"):
        return
    config = checkpoint.read_config(where)
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and args["seq_len"] > limit:
        raise LowbitError(f"seq-len {args['seq_len']} is above the model's maximum of {limit} positions: "
                          f"pass --seq-len {limit} or less")
    tokenizer = hf.load_tokenizer(where)
    if tokenizer is not None and isinstance(config.get("vocab_size"), int):
        _tokenize(tokenizer, config["vocab_size"], ids_state, args)


def _add_ratios(rows: list[dict]) -> None:
    base = rows[0]
    for r in rows:
        r["size_ratio"] = base["weight_bytes"] / r["weight_bytes"]
        r["speedup_decode"] = r["bench"]["decode_tok_s"]["median"] / base["bench"]["decode_tok_s"]["median"]
        r["speedup_prefill"] = r["bench"]["prefill_tok_s"]["median"] / base["bench"]["prefill_tok_s"]["median"]
        r["quality_pct"] = 100.0 * base["perplexity"] / r["perplexity"]


def compare(base: "str | Path", methods=(BASELINE, "rtn"), bits: int = 4, group_size: int = 128,
            dataset: str = "wikitext2", split: str = "test", data_dir=None, seq_len: int = 2048,
            max_windows: int | None = None, batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 16,
            repeats: int = 3, warmup: int = 1, device: str | None = None, dtype=None,
            calibration: CalibrationConfig | None = None, checkpoint_dir: "str | Path | None" = None,
            progress: bool = True) -> dict:
    """The comparison report (see the module docstring). ``checkpoint_dir``: where quantized
    checkpoints are written and kept (default: a temporary folder, deleted at the end)."""
    from ..evaluate.texts import is_dataset_name

    labels = parse_methods(methods)
    args = dict(bits=bits, group_size=group_size, calibration=calibration, text=dataset if is_dataset_name(dataset)
                else Path(dataset), split=split, data_dir=data_dir, seq_len=seq_len, max_windows=max_windows,
                batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, repeats=repeats, warmup=warmup,
                device=device, dtype=dtype)
    quant_config(next((m for m in labels if m in METHODS), "rtn"), bits, group_size)  # validate bits/group early
    check_bench_args_static(batch_size, prompt_len, new_tokens, repeats)
    t0 = time.perf_counter()
    rows, skipped, ids_state = [], [], {}
    _prepare(base, ids_state, args)  # a bad base, seq-len or dataset fails before any quantization
    holder = nullcontext(Path(checkpoint_dir)) if checkpoint_dir else tempfile.TemporaryDirectory(prefix="lowbit-compare-")
    with holder as work:
        work = Path(work)
        for label in labels:
            info: dict = {"method": label, "bits": 16, "group_size": None, "quantize_seconds": 0.0}
            source = base
            try:
                if label in METHODS:
                    log.info("compare: quantizing with %s", label)
                    source, q = _quantize(base, label, label, args, work, progress)
                    info.update(q)
                elif label != BASELINE:
                    source, info["method"], info["bits"] = Path(label), "checkpoint", _checkpoint_bits(Path(label))
                    label = Path(label).name
                log.info("compare: evaluating %s", label)
                row = _measure(source, label, ids_state, args, progress)
            except LowbitError as e:
                if label == labels[0] and label not in METHODS:
                    raise  # the baseline itself is at fault: nothing to compare against
                log.warning("compare: %s skipped: %s", label, e)
                skipped.append({"label": label, "reason": str(e)})
                continue
            rows.append({**info, **row})
    if not rows:
        raise LowbitError("no method could be evaluated: " + "; ".join(f"{s['label']}: {s['reason']}" for s in skipped))
    _add_ratios(rows)
    return {
        "base": str(base), "baseline": rows[0]["label"],
        "settings": {"dataset": dataset, "split": split, "seq_len": seq_len, "max_windows": max_windows,
                     "bits": bits, "group_size": group_size, "batch_size": batch_size, "prompt_len": prompt_len,
                     "new_tokens": new_tokens, "repeats": repeats, "warmup": warmup,
                     "device": rows[0]["device"], "dtype": rows[0]["dtype"],
                     "calibration": None if calibration is None else vars(calibration)},
        "rows": rows, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 1),
    }
