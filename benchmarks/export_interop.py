"""Interchange on the real demo model (SmolLM2-135M, hidden 576, mlp 1536; CPU).

RTN w4 with group 128 (ragged: 576 = 4 x 128 + 64) is quantized once in memory, then written as
gptq, awq and compressed-tensors. For each format the table shows the group size written (the
ragged groups split exactly), the size on disk, lowbit's read-back against the in-memory model
(logits, max |difference|) and the reference loader's logits against lowbit's (relative error):
transformers + compressed-tensors always; transformers + GPTQModel for gptq/awq when it imports.

    python benchmarks/export_interop.py [--group-size 128] [--bits 4] [--no-sym] [--out outputs/bench-export]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def reference_load(fmt: str, folder: Path, bits: int, sym: bool):
    from transformers import AutoModelForCausalLM, AwqConfig, CompressedTensorsConfig, GPTQConfig

    if fmt == "compressed-tensors":
        # compressed-tensors 0.20's default path cannot place asymmetric zero points; dequantize=True can.
        kw = {} if sym else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
        return "transformers+compressed-tensors", AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        return "GPTQModel not installed", None
    qc = GPTQConfig(bits=bits, backend="torch") if fmt == "gptq" else AwqConfig(bits=4, backend="torch_awq")
    return "transformers+GPTQModel (torch kernel)", AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map="cpu", quantization_config=qc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--no-sym", dest="sym", action="store_false")
    ap.add_argument("--out", default="outputs/bench-export")
    args = ap.parse_args()

    import lowbit
    from lowbit import export
    from lowbit.config import QuantConfig
    from lowbit.models import load_float
    from lowbit.quantize import quantize_model

    model, tok = load_float("demo")
    cfg = QuantConfig(method="rtn", bits=args.bits, group_size=args.group_size, sym=args.sym)
    t0 = time.perf_counter()
    quantize_model(model, cfg, progress=False)
    print(f"RTN w{args.bits} g{args.group_size} sym={args.sym}: {time.perf_counter() - t0:.1f} s")
    from pydoc_data.topics import topics

    ids = tok(topics["assert"][:1500], return_tensors="pt").input_ids[:, :128]
    with torch.inference_mode():
        ref = model(ids).logits
    rows = []
    for fmt in ("gptq", "awq", "compressed-tensors"):
        if fmt == "awq" and args.bits != 4:
            continue
        out = Path(args.out) / fmt
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        qc = export.WRITERS[fmt](model, tok, cfg, out)
        written = qc.get("group_size") or next(iter(qc.get("config_groups", {}).values()), {}).get("weights", {}).get(
            "group_size")
        mib = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
        back = lowbit.load(out, device="cpu")
        with torch.inference_mode():
            ours = back(ids).logits
        name, theirs = reference_load(fmt, out, args.bits, args.sym)
        rel = None
        if theirs is not None:
            with torch.inference_mode():
                other = theirs(ids).logits
            rel = ((other - ours).norm() / ours.norm()).item()
        rows.append({"format": fmt, "group written": written, "MiB": round(mib, 1),
                     "lowbit read-back max|dlogit|": (ours - ref).abs().max().item(),
                     "reference loader": name, "rel err vs lowbit": None if rel is None else f"{rel:.2e}"})
        del back, theirs
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
