"""QLoRA end to end on the demo model (CPU), or training speed on a Llama-3-8B-shaped model (GPU).

CPU (default): builds a small instruction set from the Python docs (pydoc_data.topics:
train topics / held-out topics), then
  1. `lowbit train` 60 steps on the 4-bit NF4 base: first/last logged train loss, held-out
     loss before/after, wall time, peak memory of the training phase;
  2. the same run with a 16-bit base (--no-load-in-4bit, bf16) for a few steps: peak memory;
  3. the adapter loaded with peft onto the unquantized base vs the training-time model: logits;
  4. `lowbit merge`: merged == base + B @ A * alpha / r exactly (fp32); `lowbit quantize` on it;
     held-out loss of base, QLoRA model, merged and merged + RTN w4g64.
    python benchmarks/qlora.py [--steps 60] [--out outputs/bench-qlora]

GPU (--gpu): random-weight Llama-3-8B shapes, bf16, LoRA r16 on every block Linear, seq 2048,
gradient checkpointing; the same training loop on a bf16 base, then on its NF4 copy;
tokens/s (steady steps) and peak GPU memory.
    PYTHONPATH=. python benchmarks/qlora.py --gpu [--seq 2048 --steps 6]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- memory of a child run


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(argv: list[str], mem_file: str) -> int:
    """Run `lowbit <argv>` in this process; record peak RSS of the load and training phases."""
    import lowbit.train.loop as loop
    from lowbit.cli import main

    inner, phases = loop.train, {}

    def measured(*a, **kw):
        from lowbit.evaluate.memory import memory_footprint

        phases["model_bytes"] = memory_footprint(a[0])
        phases["load_peak_rss"] = _vm("VmHWM")  # loading (+ 4-bit quantization) and tokenizing
        # Give freed heap (the float weights replaced by 4-bit ones) back to the OS, then reset
        # the peak-RSS counter (Linux), so the training peak counts what training holds.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        phases["rss_at_train_start"] = _vm("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        out = inner(*a, **kw)
        phases["train_peak_rss"] = _vm("VmHWM")
        return out

    loop.train = measured
    rc = main(argv)
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    phases["cpu_seconds"] = ru.ru_utime + ru.ru_stime  # this process's CPU time: what the load of others does not inflate
    Path(mem_file).write_text(json.dumps(phases))
    return rc


def run_child(argv: list[str], out: Path, log_name: str) -> tuple[dict, float]:
    mem = out / f"{log_name}.mem.json"
    t0 = time.perf_counter()
    with open(out / f"{log_name}.log", "w") as f:
        rc = subprocess.call([sys.executable, __file__, "--child", str(mem), str(torch.get_num_threads()), *argv], stdout=f,
                             stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"lowbit {' '.join(argv)} failed (rc {rc}); see {out / (log_name + '.log')}")
    return json.loads(mem.read_text()), wall


# ---------------------------------------------------------------- CPU: the demo model


def write_data(out: Path, n_eval: int, chunk_chars: int) -> tuple[Path, Path]:
    from lowbit.train.data import pydoc_instructions

    train = pydoc_instructions("train", chunk_chars=chunk_chars)
    held = pydoc_instructions("validation", chunk_chars=chunk_chars)
    held = held[:: max(1, len(held) // n_eval)][:n_eval]  # spread over all held-out topics
    paths = out / "pydoc-train.jsonl", out / "pydoc-heldout.jsonl"
    for p, recs in zip(paths, (train, held)):
        p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return paths


def logits_check(adapter: Path, ids: torch.Tensor) -> dict:
    """Training-time model (NF4 base + LoRA) vs peft on the float base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lowbit.models.demo import demo_dir
    from lowbit.nn import Linear4bit
    from lowbit.train import adapters, base
    from lowbit.train.lora import LoraLinear

    qlora, _ = base.load_base("demo", load_in_4bit=True)
    adapters.load_adapter(qlora, adapter)  # the quantization is deterministic: the training-time model
    fp = lambda: AutoModelForCausalLM.from_pretrained(str(demo_dir()), dtype=torch.float32).eval()  # noqa: E731
    deq = fp()
    for name, m in qlora.named_modules():
        if isinstance(m, LoraLinear) and isinstance(m.base_layer, Linear4bit):
            deq.get_submodule(name).weight.data.copy_(m.base_layer.dequantize(torch.float32))
    with torch.no_grad():
        ours = qlora(ids).logits
        peft_fp = PeftModel.from_pretrained(fp(), str(adapter)).eval()
        theirs = peft_fp(ids).logits
        with peft_fp.disable_adapter():
            fp_base = peft_fp(ids).logits
        peft_deq = PeftModel.from_pretrained(deq, str(adapter)).eval()
        theirs_deq = peft_deq(ids).logits
        with peft_deq.disable_adapter():
            nf4_base = peft_deq(ids).logits
    d = lambda a, b: {"max": float((a - b).abs().max()), "mean": float((a - b).abs().mean())}  # noqa: E731
    return {
        "peft_on_fp32_base_vs_training_model": d(theirs, ours),
        "peft_on_dequantized_nf4_base_vs_training_model": d(theirs_deq, ours),
        "adapter_effect_fp32_base_vs_nf4_base": d(theirs - fp_base, ours - nf4_base),
        "fp32_base_vs_nf4_base": d(fp_base, nf4_base),
        "adapter_effect_size": d(theirs, fp_base),
    }


def merge_check(adapter: Path, merged: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from lowbit.models.demo import demo_dir
    from lowbit.train import adapters

    base = AutoModelForCausalLM.from_pretrained(str(demo_dir()), dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    ad = adapters.read_adapter(adapter)
    exact = all(torch.equal(m.get_submodule(n).weight, base.get_submodule(n).weight + (b @ a) * ad.scaling[n])
                for n, (a, b) in ad.layers.items())
    return {"layers": len(ad.layers), "exact": exact}


def held_out_losses(models: dict[str, str], adapter: Path, held: Path) -> dict:
    """Held-out token loss of several models on the same examples."""
    import lowbit
    from lowbit.train import adapters, base, data
    from lowbit.train.loop import evaluate

    out = {}
    for label, src in models.items():
        if label == "qlora":
            model, tok = base.load_base("demo", load_in_4bit=True)
            adapters.load_adapter(model, adapter)
        else:
            model = lowbit.load(src, device="cpu", dtype="float32")
            tok = model.tokenizer
        ex = data.tokenize(data.load_records(held), tok, 256)
        out[label] = evaluate(model.eval(), ex, 8, tok.pad_token_id)
    return out


MEMORY_RUNS = {  # label -> extra `lowbit train` flags; same data, steps and batch for all
    "QLoRA, NF4 base, fp32 compute": [],
    "LoRA, fp32 base": ["--no-load-in-4bit"],
    "QLoRA, NF4 base, bf16 compute": ["--bnb-4bit-compute-dtype", "bfloat16"],
    "LoRA, bf16 base": ["--no-load-in-4bit", "--bnb-4bit-compute-dtype", "bfloat16"],
}


def cpu(args) -> None:
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    train_path, held_path = write_data(out, args.eval_records, args.chunk_chars)
    common = ["--model-path", "demo", "--dataset", str(train_path), "--max-seq-length", str(args.max_seq_length),
              "--per-device-train-batch-size", str(args.batch), "--learning-rate", str(args.lr), "--warmup-ratio", "0.05",
              "--logging-steps", "5", "--save-steps", "0", "--seed", "0", "--overwrite"]
    path = out / "result.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(threads=torch.get_num_threads(), batch=args.batch)
    if "quality" in args.parts:
        result.update(quality(args, out, common, held_path), load_average_quality=os.getloadavg())
        path.write_text(json.dumps(result, indent=2))
    if "memory" in args.parts:
        mem = {}
        for label, extra in MEMORY_RUNS.items():
            name = "mem-" + "".join(c if c.isalnum() else "-" for c in label.lower())
            m, wall = run_child(["train", *common, "--max-steps", str(args.baseline_steps), "--gradient-checkpointing",
                                 "--output-dir", str(out / name), *extra], out, name)
            rep = json.loads((out / name / "train_report.json").read_text())
            mem[label] = {**m, "wall_seconds": wall, "tokens_per_second": rep["tokens_per_second"]}
        result.update(memory=mem, memory_steps=args.baseline_steps, load_average_memory=os.getloadavg())
        path.write_text(json.dumps(result, indent=2))
    print_cpu(result)


def quality(args, out: Path, common: list[str], held_path: Path) -> dict:
    """The 60-step QLoRA run, then peft / merge / quantize checks on its adapter."""
    from transformers import AutoTokenizer

    from lowbit.cli import main
    from lowbit.models.demo import demo_dir
    from lowbit.train import data

    adapter = out / "adapter"
    mem_q, wall_q = run_child(["train", *common, "--eval-dataset", str(held_path), "--max-steps", str(args.steps),
                               "--output-dir", str(adapter)], out, "qlora")
    rq = json.loads((adapter / "train_report.json").read_text())
    merged, quant = out / "merged", out / "merged-rtn-w4g64"
    assert main(["merge", "--base", "demo", "--adapter", str(adapter), "--output-dir", str(merged), "--overwrite",
                 "--quiet"]) == 0
    t0 = time.perf_counter()
    rc = main(["quantize", "--model-path", str(merged), "--output-dir", str(quant), "--quantization-type", "rtn",
               "--bits", "4", "--group-size", "64", "--overwrite", "--quiet"])
    quant_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(str(demo_dir()))
    recs = data.load_records(held_path)[:4]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.input_ids[:96]) for e in data.tokenize(recs, tok, 256)],
                                          batch_first=True, padding_value=tok.pad_token_id)
    return {
        "qlora": {**{k: rq[k] for k in ("train_loss_first", "train_loss_last", "eval_loss_first", "eval_loss_last",
                                         "tokens_per_second", "train_seconds")}, "wall_seconds": wall_q, **mem_q,
                  "steps": args.steps},
        "logits": logits_check(adapter, ids),
        "merge": merge_check(adapter, merged),
        "quantize_merged": {"rc": rc, "seconds": quant_s},
        "held_out_loss": held_out_losses({"base": "demo", "qlora": "", "merged": str(merged),
                                          "merged_rtn_w4g64": str(quant)}, adapter, held_path),
    }


def print_cpu(r: dict) -> None:
    mib = lambda x: f"{x / 2**20:,.0f} MiB"  # noqa: E731
    if "qlora" in r:
        q = r["qlora"]
        drop = 1 - q["train_loss_last"] / q["train_loss_first"]
        print(f"\nQLoRA on the demo model, {q['steps']} steps x batch {r['batch']} (CPU, {r['threads']} thread(s), "
              f"load average {r['load_average_quality'][0]:.1f} from other jobs)")
        print("| | value |\n|---|---|")
        print(f"| train loss, first -> last logged (5-step means) | {q['train_loss_first']:.4f} -> "
              f"{q['train_loss_last']:.4f} ({100 * drop:.1f}% lower) |")
        print(f"| held-out loss (other topics), before -> after | {q['eval_loss_first']:.4f} -> {q['eval_loss_last']:.4f} |")
        print(f"| wall time of `lowbit train` (load, quantize, train, eval x2, save) | {q['wall_seconds']:.0f} s |")
        print(f"| CPU time of that process | {q['cpu_seconds']:.0f} s |")
        print(f"| training throughput (wall) | {q['tokens_per_second']:.0f} tokens/s |")
        print("\nLogits (4 held-out prompts x 96 tokens), |difference| max / mean")
        for k, v in r["logits"].items():
            print(f"| {k} | {v['max']:.2e} / {v['mean']:.2e} |")
        m = r["merge"]
        print(f"\nmerge: {m['layers']} layers, merged == base + B@A*alpha/r exactly (fp32): {m['exact']}; "
              f"lowbit quantize (rtn w4 g64) on it: rc {r['quantize_merged']['rc']} in {r['quantize_merged']['seconds']:.0f} s")
        print("held-out loss: " + ", ".join(f"{k} {v:.4f}" for k, v in r["held_out_loss"].items()))
    if "memory" in r:
        print(f"\nMemory, {r['memory_steps']} steps x batch {r['batch']}, gradient checkpointing, no eval "
              f"(peak RSS of the whole process, torch + transformers included)")
        print("| run | model in memory (weights + LoRA) | RSS at training start | peak RSS, training | "
              "peak RSS, loading |\n|---|---|---|---|---|")
        for label, v in r["memory"].items():
            print(f"| {label} | {mib(v['model_bytes'])} | {mib(v['rss_at_train_start'])} | {mib(v['train_peak_rss'])} | "
                  f"{mib(v['load_peak_rss'])} |")


# ---------------------------------------------------------------- GPU: Llama-3-8B shapes


def gpu(args) -> None:
    from transformers import LlamaConfig

    from lowbit import kernels
    from lowbit.nn import Linear4bit
    from lowbit.train.config import TrainConfig
    from lowbit.train.data import Example
    from lowbit.train.lora import LoraLinear, LoraSettings, apply_lora, trainable_summary
    from lowbit.train.loop import train

    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256)
    if args.smoke:  # a CPU check of this code path with small shapes
        shape = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    cfg = LlamaConfig(**shape, num_hidden_layers=args.layers, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s",
          flush=True)
    g = torch.Generator().manual_seed(0)
    n_ex = args.steps * args.batch
    examples = [Example(ids, ids) for ids in torch.randint(0, cfg.vocab_size, (n_ex, args.seq), generator=g).tolist()]
    settings = LoraSettings(r=16, alpha=32, dropout=0.05)
    apply_lora(model, settings)
    print(trainable_summary(model), flush=True)
    results = {}
    for label in ("bf16 LoRA", "QLoRA (NF4 base)"):
        if label.startswith("QLoRA"):
            t0 = time.perf_counter()
            for m in model.modules():
                if isinstance(m, LoraLinear) and isinstance(m.base_layer, torch.nn.Linear):
                    m.base_layer = Linear4bit.from_linear(m.base_layer, compute_dtype=torch.bfloat16)
            torch.cuda.empty_cache()
            print(f"quantized the base to NF4 in {time.perf_counter() - t0:.1f} s; fast nf4 kernels registered: "
                  f"{len(kernels.KERNELS.get('nf4', []))}", flush=True)
        weights = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        tcfg = TrainConfig(output_dir=f"/tmp/qlora-bench-{label[:4]}", max_steps=args.steps, logging_steps=1,
                           save_steps=0, per_device_train_batch_size=args.batch, gradient_checkpointing=True,
                           learning_rate=1e-4, seed=0)
        rep = train(model, _NoTok(), examples, [], tcfg, settings, "random-llama3-8b-shape",
                    {}, overwrite=True, progress=False)
        steady = sorted(rep["step_seconds"][2:])
        tok_step = args.batch * args.seq
        results[label] = {"steady_tokens_per_second": rep["steady_tokens_per_second"],
                          "median_tokens_per_second": tok_step / steady[len(steady) // 2],
                          "min_max_tokens_per_second": [tok_step / steady[-1], tok_step / steady[0]],
                          "step_seconds": rep["step_seconds"], "peak_gpu_gib": rep.get("peak_gpu_memory_bytes", 0) / 2**30,
                          "weights_gib": weights / 2**30, "loss_first": rep["train_loss_first"],
                          "loss_last": rep["train_loss_last"]}
        print(label, json.dumps(results[label]), flush=True)
    print(f"\nLlama-3-8B shapes ({args.layers} layers), random bf16 weights, LoRA r16 on all block Linears, "
          f"batch {args.batch} x {args.seq} tokens, gradient checkpointing, "
          f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}")
    print("| base | tokens/s, median of steps 3.. [min-max] | vs bf16 | peak GPU memory | weights + LoRA |")
    print("|---|---|---|---|---|")
    ref = results["bf16 LoRA"]["median_tokens_per_second"]
    for label, r in results.items():
        lo, hi = r["min_max_tokens_per_second"]
        print(f"| {label} | {r['median_tokens_per_second']:,.0f} [{lo:,.0f}-{hi:,.0f}] | "
              f"{r['median_tokens_per_second'] / ref:.2f}x | {r['peak_gpu_gib']:.1f} GiB | {r['weights_gib']:.1f} GiB |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


class _NoTok:
    """Stands in for a tokenizer: the synthetic data needs only a pad id, and nothing is saved."""

    pad_token_id = 0
    eos_token_id = 0

    def save_pretrained(self, folder):
        pass


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        torch.set_num_threads(int(sys.argv[3]))
        sys.exit(child(sys.argv[4:], sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="Llama-3-8B-shaped speed run on CUDA")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 60 CPU, 6 GPU)")
    p.add_argument("--baseline-steps", type=int, default=3, help="CPU: steps of each memory run")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 4 CPU, 1 GPU)")
    p.add_argument("--lr", type=float, default=1e-3, help="CPU: peak learning rate")
    p.add_argument("--eval-records", type=int, default=48, help="CPU: held-out records")
    p.add_argument("--seq", type=int, default=2048, help="GPU: tokens per sequence")
    p.add_argument("--layers", type=int, default=32, help="GPU: decoder blocks (32 = Llama-3-8B)")
    p.add_argument("--out", default="outputs/bench-qlora", help="CPU: work folder")
    p.add_argument("--json", default=None, help="GPU: also write the results here")
    p.add_argument("--smoke", action="store_true", help="GPU path with small shapes (runs on CPU)")
    p.add_argument("--chunk-chars", type=int, default=160, help="CPU: characters per passage of the pydoc set")
    p.add_argument("--max-seq-length", type=int, default=192, help="CPU: tokens per example")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's)")
    p.add_argument("--parts", default="quality,memory", help="CPU: quality (60-step run + checks), memory")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu:
        args.steps, args.batch = args.steps or 6, args.batch or 1
        gpu(args)
    else:
        args.steps, args.batch = args.steps or 60, args.batch or 4
        cpu(args)


if __name__ == "__main__":
    main()
