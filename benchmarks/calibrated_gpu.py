"""Time and peak GPU memory of GPTQ / AWQ on a Llama-3-8B-shaped model (random weights).

    PYTHONPATH=. python benchmarks/calibrated_gpu.py --methods gptq awq --out results.json
    python benchmarks/calibrated_gpu.py --small --device cpu     # a quick check of the script

The model is built on the meta device and materialized on the host in float16 one block at
a time (one random block copied into every block, so building 8B parameters takes seconds);
the sequential runner then moves one block at a time to the GPU. Calibration: ``--samples``
x ``--seq-len`` random token ids (timing does not depend on the text). Reports the time of
``quantize_model``, per-block times, and the peak GPU memory next to the size of one block
and of the calibration activations (inputs + outputs of a block).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)
SMALL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512)


@torch.no_grad()
def build(shape: dict, dtype=torch.float16):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model = model.to_empty(device="cpu")  # allocated, not initialized: filled below
    g = torch.Generator().manual_seed(0)
    template = model.model.layers[0]
    for name, p in template.named_parameters():
        if p.dim() == 1:
            p.fill_(1.0)  # norms
        else:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02))
    for block in model.model.layers[1:]:
        block.load_state_dict(template.state_dict())
    for m in (model.model.embed_tokens, model.lm_head):
        m.weight.normal_(0, 0.02, generator=g)
    model.model.norm.weight.fill_(1.0)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were on meta
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="*", default=["gptq"])
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="a tiny Llama instead of the 8B shape")
    p.add_argument("--blocks", type=int, default=None, help="only the first N blocks")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from lowbit.config import QuantConfig
    from lowbit.quantize import quantize_model

    shape = dict(SMALL if args.small else LLAMA3_8B)
    if args.blocks:
        shape["num_hidden_layers"] = args.blocks
    results = []
    for method in args.methods:
        t0 = time.perf_counter()
        model = build(shape)
        build_s = time.perf_counter() - t0
        block_bytes = sum(t.numel() * t.element_size() for t in model.model.layers[0].parameters())
        act_bytes = args.samples * args.seq_len * shape["hidden_size"] * 2
        ids = torch.randint(0, shape["vocab_size"], (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        records = quantize_model(model, QuantConfig(method=method, bits=args.bits, group_size=args.group_size),
                                 progress=True, calibration=ids, device=args.device)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        per_block = sorted({(r["layer"].split(".")[2], r["block_seconds"]) for r in records}, key=lambda x: int(x[0]))
        res = {"method": method, "shape": shape, "samples": args.samples, "seq_len": args.seq_len,
               "bits": args.bits, "group_size": args.group_size, "device": args.device,
               "gpu": torch.cuda.get_device_name() if cuda else None, "build_seconds": round(build_s, 1),
               "quantize_seconds": round(seconds, 1), "block_seconds": [s for _, s in per_block],
               "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               "one_block_gib": round(block_bytes / 2**30, 2), "activations_gib": round(2 * act_bytes / 2**30, 2),
               "layers": len(records)}
        print(json.dumps(res), flush=True)
        results.append(res)
        del model
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
