"""Where LLM.int8 loses perplexity: paired per-token NLL differences against the float model.

    python benchmarks/int8_diagnose.py [--windows 1] [--seq-len 2048] [--stats] [--variants ...]

Every variant replaces the decoder's Linear layers (or one kind of them: q/k/v/o/gate/up/down)
by a simulated int8 path and scores the same tokens as the float model (WikiText-2 test, the
first --windows windows); the difference of mean NLL is paired, so one window separates
effects of a few 0.1%. Simulated = quantize-dequantize in float32 then a float matmul: equal to
the int32-accumulated product up to float32 rounding (checked against lowbit's own
Linear8bitLt in the "lowbit" variant). "bnb" runs bitsandbytes' own LLM.int8 ops
(int8_vectorwise_quant + int8_mixed_scaled_mm, what its MatMul8bitLt calls) when installed.

--stats prints, per kind of layer, the input's outlier columns (any |x| > 6) and the per-token
absmax of the remaining columns, with the relative error of per-token vs per-block rounding.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

from lowbit.evaluate.perplexity import token_ids, token_nll
from lowbit.formats import int8
from lowbit.models.load import load_float

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def fake_act(x: torch.Tensor, threshold: float, block: int) -> torch.Tensor:
    """x [M, K] float32 -> its LLM.int8 activation rounding: outlier columns (any |x| >
    threshold) kept, the rest rounded to int8 per token (block 0) or per token and block."""
    cols = int8.outlier_columns(x, threshold)
    xi = x.masked_fill(cols, 0)
    m, k = xi.shape
    if block:
        nb = -(-k // block)  # a ragged last block: zero padding changes no absmax
        xb = nn.functional.pad(xi, (0, nb * block - k)).reshape(m, nb, block)
        s = xb.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
        xq = (torch.round(xb / s) * s).reshape(m, nb * block)[:, :k]
    else:
        s = xi.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127
        xq = torch.round(xi / s) * s
    return torch.where(cols, x, xq)


class Sim(nn.Module):
    """A Linear with weight rounding (row-wise int8) and/or activation rounding simulated."""

    def __init__(self, lin: nn.Linear, weights: bool, act: bool, threshold: float, block: int):
        super().__init__()
        w = lin.weight.detach().float()
        if weights:
            q, s = int8.quantize_rowwise(w)
            w = int8.dequantize_rowwise(q, s)
        self.w, self.b = w, lin.bias
        self.act, self.threshold, self.block = act, threshold, block

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if self.act:
            x2 = fake_act(x2, self.threshold, self.block)
        y = nn.functional.linear(x2, self.w, self.b)
        return y.reshape(*shape[:-1], -1).to(x.dtype)


class Bnb(nn.Module):
    """bitsandbytes' LLM.int8 forward (MatMul8bitLt's inference path), on CPU."""

    def __init__(self, lin: nn.Linear, threshold: float):
        super().__init__()
        import bitsandbytes.functional as F

        self.F = F
        self.cb, self.scb, _ = F.int8_vectorwise_quant(lin.weight.detach().half())
        self.b, self.threshold = lin.bias, threshold

    def forward(self, x):
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        ca, sca, cols = self.F.int8_vectorwise_quant(a.half(), threshold=self.threshold)
        if self.threshold > 0:
            y, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(a, ca, self.cb, sca, self.scb, cols, self.b)
        else:
            y = torch.ops.bitsandbytes.int8_scaled_mm.default(ca, self.cb, sca, self.scb, bias=self.b, dtype=a.dtype)
        return y.reshape(*shape[:-1], -1)


def variant_factory(name: str):
    """'w8a8[-t6|-t0][-b64]', 'w8', 'a8[-t6][-b64]', 'bnb[-t0]', 'lowbit[-b64]', each optionally
    suffixed ':kind' to apply to one kind of layer only."""
    spec, _, kind = name.partition(":")
    parts = spec.split("-")
    threshold = 6.0
    block = 0
    for p in parts[1:]:
        if p.startswith("t"):
            threshold = float(p[1:])
        elif p.startswith("b"):
            block = int(p[1:])
    base = parts[0]

    def make(lin: nn.Linear) -> nn.Module:
        if base == "bnb":
            return Bnb(lin, threshold)
        if base == "lowbit":
            from lowbit.nn import Linear8bitLt

            return Linear8bitLt.from_linear(lin, threshold=threshold, act_block_size=block)
        return Sim(lin, weights=base in ("w8a8", "w8"), act=base in ("w8a8", "a8"), threshold=threshold, block=block)

    return make, (kind or None)


@torch.no_grad()
def score(model, windows: list[torch.Tensor]) -> torch.Tensor:
    """Per-token NLL float64 [sum of (len - 1)] over the windows."""
    out = []
    for ids in windows:
        logits = model(input_ids=ids[None], use_cache=False).logits  # [1, L, V]
        out.append(token_nll(logits, ids[None])[0])
    return torch.cat(out)


def swap(model, make, kind):
    """Replace decoder Linears (all, or those named ``kind``); returns the originals to restore."""
    saved = []
    for name, mod in list(model.model.layers.named_modules()):
        if isinstance(mod, nn.Linear) and (kind is None or name.endswith(kind)):
            parent, _, child = name.rpartition(".")
            p = model.model.layers.get_submodule(parent)
            saved.append((p, child, mod))
            setattr(p, child, make(mod))
    return saved


def restore(saved):
    for p, child, mod in saved:
        setattr(p, child, mod)


@torch.no_grad()
def stats(model, windows, block: int) -> None:
    rec: dict[str, list] = {k: [] for k in KINDS}
    hooks = []
    for name, mod in model.model.layers.named_modules():
        kind = name.rpartition(".")[2]
        if kind in ("q_proj", "o_proj", "gate_proj", "down_proj"):  # q/k/v and gate/up share inputs
            hooks.append(mod.register_forward_pre_hook(lambda m, a, kind=kind: rec[kind].append(a[0][0].float())))
    model(input_ids=windows[0][None], use_cache=False)
    for h in hooks:
        h.remove()
    print(f"input statistics, window 0 ({windows[0].numel()} tokens); threshold 6; per layer of 30, median [max]")
    print(f"{'input of':<10} {'K':>5} {'outlier cols':>14} {'tok absmax p50':>15} {'p99':>8} {'max':>8} "
          f"{'rel err/token':>14} {f'rel err/b{block}':>12}")
    for kind, xs in rec.items():
        if not xs:
            continue
        ncols, p50, p99, mx, e_tok, e_blk = [], [], [], [], [], []
        for x in xs:
            cols = int8.outlier_columns(x, 6.0)
            ncols.append(int(cols.sum()))
            xi = x.masked_fill(cols, 0)
            am = xi.abs().amax(1)
            p50.append(am.median().item())
            p99.append(am.quantile(0.99).item())
            mx.append(am.max().item())
            norm = xi.norm()
            e_tok.append(((fake_act(x, 6.0, 0) - x).norm() / norm).item())
            e_blk.append(((fake_act(x, 6.0, block) - x).norm() / norm).item())
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        print(f"{kind:<10} {xs[0].shape[1]:>5} {med(ncols):>6} [{max(ncols):>5}] {med(p50):>15.3f} {med(p99):>8.3f} "
              f"{max(mx):>8.2f} {med(e_tok):>14.5f} {med(e_blk):>12.5f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--block", type=int, default=64, help="block size for --stats")
    p.add_argument("--stats", action="store_true")
    p.add_argument("--variants", nargs="*", default=["w8a8", "w8", "a8"] + [f"a8:{k}" for k in KINDS])
    args = p.parse_args()
    model, tok = load_float(args.model)
    model.eval()
    ids = token_ids(tok, "wikitext2", data_dir=args.data_dir)
    windows = [ids[i * args.seq_len:(i + 1) * args.seq_len] for i in range(args.windows)]
    if args.stats:
        stats(model, windows, args.block)
    base = score(model, windows)
    print(f"fp32: {base.numel()} tokens, nll {base.mean():.5f}, ppl {math.exp(base.mean()):.4f}", flush=True)
    print(f"{'variant':<22} {'ppl':>9} {'vs fp32':>8} {'dNLL':>9} {'+-se':>8}")
    for v in args.variants:
        make, kind = variant_factory(v)
        saved = swap(model, make, kind)
        try:
            nll = score(model, windows)
        finally:
            restore(saved)
        d = nll - base
        se = d.std() / math.sqrt(d.numel())
        print(f"{v:<22} {math.exp(nll.mean()):>9.4f} {100 * math.expm1(d.mean().item()):>+7.2f}% "
              f"{d.mean():>+9.5f} {se:>8.5f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
