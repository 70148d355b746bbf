"""Quality and size of on-the-fly quantization (LLM.int8, NF4, NF4 + double quant, FP4)
against the float model and RTN int4 group 64, on the demo model (or --model).

    python benchmarks/bnb_quality.py [--windows 8] [--seq-len 2048] [--json out.json]
                                     [--formats fp32,int8,nf4,...] [--peak-memory]
                                     [--device cuda] [--dtype float32]

Perplexity: WikiText-2 test (``--data-dir``, default ../shared/data), GPTQ protocol
(non-overlapping windows of --seq-len tokens from the start of the file); --windows K scores
the first K windows only (the whole file has 153 windows of 2048 tokens for the demo
tokenizer: too slow for 2 shared CPU cores; --windows 0 scores them all). --device cuda runs
every row on the GPU (after checking LLM.int8's int8 path there against the CPU); --dtype is
that of the float parts and of the quantized layers' matmuls (float32 by default, so the GPU
figures compare with the CPU ones). Memory: parameters + buffers of the loaded
model (lowbit.memory_footprint); bits/q.weight: bytes of the quantized layers' weight
tensors (codes, scales, absmax, nested absmax) x 8 / their weight count, measured.
--peak-memory: how much a fresh process's peak RSS grows while it loads the model at nf4+dq
lazily (lowbit.load(..., load_in_4bit=True)) versus float first, then quantized.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lowbit
from lowbit.config import QuantConfig
from lowbit.evaluate.footprint import bits_per_quantized_weight
from lowbit.evaluate.perplexity import perplexity, token_ids

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: label -> lowbit.load keyword arguments, or a QuantConfig written by `lowbit quantize` first.
FORMATS = {
    "fp32": {},
    "int8": dict(load_in_8bit=True, llm_int8_threshold=6.0),  # activation scales per token and 64 columns
    "int8-b128": dict(load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_act_block_size=128),
    "int8-b32": dict(load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_act_block_size=32),
    # the paper's (and bitsandbytes') vector-wise quantization: one activation scale per token
    "int8-per-token": dict(load_in_8bit=True, llm_int8_threshold=6.0, llm_int8_act_block_size=0),
    "int8-t0": dict(load_in_8bit=True, llm_int8_threshold=0.0),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4+dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "fp4+dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "rtn-int4-g64": QuantConfig(method="rtn", bits=4, group_size=64),  # symmetric, lowbit's RTN default
    "rtn-int4-g64-asym": QuantConfig(method="rtn", bits=4, group_size=64, sym=False),
    # Diagnostic: the same int8 weights with float activations (what bitsandbytes' CPU
    # backend computes); separates weight error from LLM.int8's activation quantization.
    "int8-weights-only": dict(load_in_8bit=True),
}

_PEAK_SCRIPT = """
import sys, lowbit, torch
import transformers.models.llama.modeling_llama
from lowbit.evaluate.memory import peak_rss
from lowbit.models.load import load_float
from lowbit.models.onthefly import quantize_model_bnb
from lowbit.config import BnbConfig
src, mode = sys.argv[1], sys.argv[2]
before = peak_rss()
if mode == "lazy":
    m = lowbit.load(src, load_in_4bit=True, bnb_4bit_use_double_quant=True)
else:
    m, _ = load_float(src)
    quantize_model_bnb(m, BnbConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True).to_quant_config(), False)
print(before, peak_rss(), lowbit.memory_footprint(m))
"""


def load_format(model: str, label: str, workdir: Path, device: str = "cpu", dtype: str = "float32"):
    kwargs = FORMATS[label]
    if isinstance(kwargs, QuantConfig):
        from lowbit.quantize import quantize

        out = workdir / label
        quantize(model, out, kwargs, overwrite=True, progress=False)
        return lowbit.load(out, device=device, dtype=dtype)
    if not kwargs:
        return lowbit.load(model, device=device, dtype=dtype)
    m = lowbit.load(model, device_map=device, dtype=dtype, bnb_4bit_compute_dtype=dtype, **kwargs)
    if label == "int8-weights-only":
        from lowbit.models.checkpoint import set_module
        from lowbit.nn import Linear8bitLt

        for name, mod in list(m.named_modules()):
            if isinstance(mod, Linear8bitLt):
                lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                      device=mod.weight_int8.device, dtype=mod.compute_dtype)
                lin.weight.data = mod.dequantize(mod.compute_dtype)
                if mod.bias is not None:
                    lin.bias.data = mod.bias.to(mod.compute_dtype)
                set_module(m, name, lin)
    return m


def check_int8_on(device: str) -> float:
    """Linear8bitLt on ``device`` against the CPU (the tested reference) on a demo-sized layer with
    planted outliers, per token and blockwise (ragged blocks; 37 rows, and 2 rows for decode): the int32
    sums are exact on both, so only float rounding may differ. Returns the largest relative
    difference; raises if it exceeds 1e-4."""
    from lowbit.nn import Linear8bitLt

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(576, 1536)
    x = torch.randn(37, 576, generator=g)
    x[:, [7, 300]] = 20.0
    worst = 0.0
    for block in (0, 64, 100):
        for rows in (x, x[:2]):  # prefill-sized (a matmul per block) and decode-sized (block-diagonal)
            layer = Linear8bitLt.from_linear(lin, threshold=6.0, act_block_size=block)
            ref = layer(rows)
            out = layer.to(device)(rows.to(device)).cpu()
            worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
    if worst > 1e-4:
        raise RuntimeError(f"LLM.int8 on {device} differs from the CPU reference by {worst:.2e} (relative)")
    return worst


def peak_memory(model: str) -> dict:
    """Peak RSS of a fresh process loading ``model`` at nf4+dq, lazily or float-first; the
    increase over its RSS after imports, beside the loaded model's bytes."""
    out = {}
    for mode in ("lazy", "float-then-quantize"):
        res = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, model, mode], capture_output=True, text=True,
                             check=True)
        before, peak, footprint = map(int, res.stdout.split()[-3:])
        out[mode] = {"rss_after_imports": before, "peak_rss": peak, "peak_increase": peak - before,
                     "model_bytes": footprint}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--windows", type=int, default=8, help="first K windows of the test file (default 8; 0: all)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="float parts and quantized matmuls (default float32)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {', '.join(FORMATS)}; 'none' with --peak-memory")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-memory", action="store_true")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = [] if args.formats == "none" else args.formats.split(",")
    unknown = [lab for lab in labels if lab not in FORMATS]
    if unknown:
        p.error(f"unknown format(s) {unknown}")
    if args.device != "cpu" and any(lab.startswith("int8") for lab in labels):
        print(f"LLM.int8 on {args.device} vs CPU: max relative difference {check_int8_on(args.device):.1e}",
              file=sys.stderr, flush=True)
    rows = []
    ids = None
    with tempfile.TemporaryDirectory() as tmp:
        for label in labels:
            t0 = time.perf_counter()
            model = load_format(args.model, label, Path(tmp), args.device, args.dtype)
            load_s = time.perf_counter() - t0
            if ids is None:
                ids = token_ids(model.tokenizer, "wikitext2", data_dir=args.data_dir)
            r = perplexity(model, model.tokenizer, ids, seq_len=args.seq_len, max_windows=args.windows or None,
                           progress=False)
            diag = label == "int8-weights-only"  # its size is the int8 row's; it holds float copies
            rows.append({"format": label, "perplexity": r.perplexity, "nll": r.nll, "tokens": r.tokens,
                         "windows": r.windows, "memory_bytes": None if diag else lowbit.memory_footprint(model),
                         "bits_per_quantized_weight": None if diag else bits_per_quantized_weight(model),
                         "load_seconds": round(load_s, 1), "eval_seconds": round(r.seconds, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            del model
    base = next((r["perplexity"] for r in rows if r["format"] == "fp32"), None)
    if rows:
        print(f"model {args.model}; WikiText-2 test, seq {args.seq_len}, first {rows[0]['windows']} windows "
              f"({rows[0]['tokens']} predicted tokens); {args.dtype}; "
              + (f"CPU, {torch.get_num_threads()} threads" if args.device == "cpu" else args.device))
        print(f"{'format':<17} {'perplexity':>10} {'vs fp32':>8} {'memory MiB':>11} {'bits/q.weight':>13}")
    for r in rows:
        delta = "" if base is None else f"{100 * (r['perplexity'] / base - 1):+.2f}%"
        bits = "-" if r["bits_per_quantized_weight"] is None else f"{r['bits_per_quantized_weight']:.3f}"
        mem = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**20:.1f}"
        print(f"{r['format']:<17} {r['perplexity']:>10.3f} {delta:>8} {mem:>11} {bits:>13}")
    result = {"rows": rows, "seq_len": args.seq_len, "model": args.model, "device": args.device, "dtype": args.dtype}
    if args.peak_memory:
        result["peak_memory"] = peak = peak_memory(args.model)
        for mode, v in peak.items():
            print(f"nf4+dq load, {mode}: peak RSS +{v['peak_increase'] / 2**20:.0f} MiB over the imports "
                  f"({v['peak_rss'] / 2**20:.0f} MiB total); the loaded model holds {v['model_bytes'] / 2**20:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
