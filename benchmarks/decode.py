"""End-to-end decode speed (batch 1 by default): a Llama-3-8B-shaped model (random weights),
fp16 vs int4 g128 asymmetric (QuantLinear on the Triton kernels), through the same generation
code (lowbit.evaluate.static_decode: static KV cache, one CUDA graph per token).

    PYTHONPATH=. python benchmarks/decode.py [--layers 32] [--new 256] [--batch 1] [--quantize-lm-head] [--profile]

The int4 model is the fp16 model rounded to nearest (g128, asymmetric) layer by layer on
the GPU; embeddings, norms and lm_head stay fp16 (lowbit's default). tok/s = decode steps /
seconds over the graph replays (the first token, from the prefill, is not counted), times
the batch (--batch B sequences decode together: the matmuls then have M = B rows); median
of --repeats runs. A logits check compares the Triton path with the reference kernels.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from lowbit.evaluate.static_decode import StaticDecoder
from lowbit.formats import group_block, quantize_affine
from lowbit.nn import QuantLinear

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def llama3_8b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.float16)
    return model.eval()


def quantize_rtn(model, bits: int, group_size: int, lm_head: bool) -> None:
    """Swap every decoder Linear (and optionally lm_head) for a QuantLinear, on the GPU."""
    targets = [(f"model.layers.{i}.{name}") for i in range(len(model.model.layers)) for name in LINEARS]
    if lm_head:
        targets.append("lm_head")
    for full in targets:
        parent_name, _, child = full.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        w = lin.weight.data.float()
        aq = quantize_affine(w, bits, group_block(w.shape[1], group_size), sym=False)
        setattr(parent, child, QuantLinear.from_quantized(aq, group_size, lin.bias))
        del lin, w, aq
    torch.cuda.empty_cache()


def weight_bytes(model) -> int:
    """Bytes one decode step reads: every matmul weight (packed + scales + zeros), not the embeddings."""
    total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            total += sum(b.numel() * b.element_size() for b in (mod.qweight, mod.qzeros, mod.scales))
        elif isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def tok_per_s(model, prompt, new: int, repeats: int, graph: bool) -> tuple[float, torch.Tensor]:
    dec = StaticDecoder(model, max_len=prompt.shape[1] + new + 8, batch=prompt.shape[0], cuda_graph=graph)
    rates, tokens = [], None
    for _ in range(repeats + 1):  # the first run compiles, repacks and captures
        tokens, seconds = dec.generate(prompt, new)
        rates.append(prompt.shape[0] * (new - 1) / seconds)
    return statistics.median(rates[1:]), tokens


def kernel_profile(model, prompt, steps: int = 16) -> dict[str, float]:
    """Microseconds per decode step by kernel name (eager steps under torch.profiler: kernel
    durations do not depend on how they were launched; the graph only removes the gaps)."""
    from torch.profiler import ProfilerActivity, profile

    dec = StaticDecoder(model, max_len=prompt.shape[1] + steps + 8, batch=prompt.shape[0], cuda_graph=False)
    dec.generate(prompt, 2)  # compiles and repacks outside the profile
    dec.generate(prompt, 1)  # leaves the static token and position at the prompt's end
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec._step()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us and e.key[:1] != "[":
            per[e.key] = us / steps
    return per


def print_profile(rows: list[tuple[str, dict[str, float]]], step_us: list[float], top: int = 14) -> None:
    """Side by side: the kernels that take the most time in any of the models."""
    names = sorted({k for _, per in rows for k in per}, key=lambda k: -max(per.get(k, 0) for _, per in rows))
    print("\nper decode step, us (kernel time from an eager profile; 'graph step' = 1e6 / tok/s):")
    print(f"{'kernel':<60}" + "".join(f"{name:>16}" for name, _ in rows))
    for k in names[:top]:
        print(f"{k[:59]:<60}" + "".join(f"{per.get(k, 0):>16.1f}" for _, per in rows))
    rest = [sum(v for k, v in per.items() if k not in names[:top]) for _, per in rows]
    print(f"{'(all other kernels)':<60}" + "".join(f"{r:>16.1f}" for r in rest))
    print(f"{'sum of kernel time':<60}" + "".join(f"{sum(per.values()):>16.1f}" for _, per in rows))
    print(f"{'graph step':<60}" + "".join(f"{s:>16.1f}" for s in step_us))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (tok/s counts all of them)")
    p.add_argument("--quantize-lm-head", action="store_true")
    p.add_argument("--eager", action="store_true", help="also time without CUDA graphs")
    p.add_argument("--profile", action="store_true", help="also print kernel time per decode step, by kernel")
    p.add_argument("--configs", metavar="JSON", help="tuned kernel configs (benchmarks/kernels.py --tune --best)")
    args = p.parse_args(argv)
    if args.configs:
        from lowbit.kernels.triton.configs import load_table

        load_table(args.configs)
    if not torch.cuda.is_available():
        print("benchmarks/decode.py needs a CUDA GPU", file=sys.stderr)
        return 2
    model = llama3_8b(args.layers)
    prompt = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    fp16_bytes = weight_bytes(model)
    r16, _ = tok_per_s(model, prompt, args.new, args.repeats, graph=True)
    rows.append(("fp16", "graph", r16, fp16_bytes))
    profiles = [("fp16", kernel_profile(model, prompt))] if args.profile else []
    if args.eager:
        rows.append(("fp16", "eager", tok_per_s(model, prompt, args.new, 1, graph=False)[0], fp16_bytes))
    quantize_rtn(model, 4, 128, args.quantize_lm_head)
    q_bytes = weight_bytes(model)
    r4, _ = tok_per_s(model, prompt, args.new, args.repeats, graph=True)
    rows.append(("int4 g128 asym" + (" + head" if args.quantize_lm_head else ""), "graph", r4, q_bytes))
    if args.profile:
        profiles.append(("int4", kernel_profile(model, prompt)))
    if args.eager:
        rows.append((rows[-1][0], "eager", tok_per_s(model, prompt, args.new, 1, graph=False)[0], q_bytes))

    # The same int4 model through the reference kernels: logits of one prefill must agree.
    dec = StaticDecoder(model, max_len=args.prompt + 8, batch=args.batch, cuda_graph=False)
    fast = dec.forward(prompt.cuda(), torch.arange(args.prompt, device="cuda")).float()
    os.environ["LOWBIT_KERNEL"] = "reference"
    ref = dec.forward(prompt.cuda(), torch.arange(args.prompt, device="cuda")).float()
    del os.environ["LOWBIT_KERNEL"]
    rel = ((fast - ref).norm() / ref.norm()).item()

    print(f"Llama-3-8B-shaped ({args.layers} layers), batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, "
          f"{torch.cuda.get_device_name()}")
    print(f"{'model':<24}{'mode':<7}{'tok/s':>8}{'GB/step':>10}{'GB/s':>7}{'vs fp16':>9}")
    for name, mode, rate, nbytes in rows:
        gbs = rate / args.batch * nbytes / 1e9  # decode steps a second x weight bytes a step
        print(f"{name:<24}{mode:<7}{rate:>8.1f}{nbytes / 1e9:>10.2f}{gbs:>7.0f}{rate / r16:>8.2f}x")
    print(f"int4 logits, Triton vs reference kernels: relative error {rel:.2e}")
    if profiles:
        print_profile(profiles, [1e6 * args.batch / r16, 1e6 * args.batch / r4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
