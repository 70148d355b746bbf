"""Generate text from a model (a quick check that a checkpoint works)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf file, hub id or 'demo'")
    p.add_argument("--prompt", default="Hello, my name is", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import LowbitError
    from ..models.load import load

    if args.max_new_tokens < 1:
        raise LowbitError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    model = load(args.model, device=args.device)
    tok = model.tokenizer
    if tok is None:
        raise LowbitError(f"{args.model} has no tokenizer files: copy them into the model folder")
    if args.chat and tok.chat_template:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(args.prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(next(model.parameters()).device)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    print(args.prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0
