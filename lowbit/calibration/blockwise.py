"""What each int-group method does with one decoder block (called by ``sequential.run``).

- RTN: round every Linear; no data.
- GPTQ: for each set of layers that read the same input, in execution order when
  true-sequential (q,k,v | o | gate,up | down), gather the Hessians of their inputs through
  the block (already-quantized layers in place, so later layers see earlier layers' errors),
  then quantize them; without true-sequential, one pass for all layers.
- AWQ: one pass of the float block for the statistics of every layer's input; search each
  scale group's scale and fold it in (registry ``awq_groups``); then clip and round each layer.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..algorithms import ALGORITHMS
from ..algorithms.awq import awq_quantize, can_fold, fold_scale, rescale_stats, search_scale
from ..algorithms.gptq import HessianStats
from ..config import QuantConfig
from ..errors import LowbitError
from ..models.checkpoint import set_module
from ..models.registry import Arch, block_linears
from ..nn import QuantLinear
from .sequential import BlockRunner

log = logging.getLogger(__name__)

#: AWQ leaves query/key projections unclipped: their errors pass through the softmax
#: (AutoAWQ's avoid_clipping list, matched on the last name component).
NO_CLIP = ("q_proj", "k_proj", "qkv_proj", "query", "key", "query_key_value", "Wqkv")


def is_skipped(name: str, patterns: list[str]) -> bool:
    """A layer is skipped if a pattern equals its full name or a dotted suffix of it."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def quantize_linear(name: str, linear: nn.Linear, cfg: QuantConfig, stats: object = None,
                    algorithm: Callable | None = None) -> tuple[QuantLinear, dict]:
    """One Linear -> (QuantLinear on the weight's device, report record)."""
    W = linear.weight.data
    if not torch.isfinite(W).all():
        raise LowbitError(f"layer {name} has NaN or Inf weights: the model is corrupt; re-export it")
    start = time.perf_counter()
    result = (algorithm or ALGORITHMS[cfg.method])(W, stats, cfg)
    layer = QuantLinear.from_quantized(result.weight, cfg.group_size, linear.bias)
    W_hat = result.weight.dequantize()
    rel = ((W_hat - W.float()).norm() / W.float().norm().clamp_min(1e-12)).item()
    record = {"layer": name, "shape": list(W.shape), "loss": result.loss, "rel_weight_error": rel,
              "seconds": round(time.perf_counter() - start, 4)}
    log.debug("%s: loss %.4g, relative weight error %.4f", name, result.loss, rel)
    return layer, record


@dataclass
class BlockContext:
    """What a block step needs besides the block: the config, the registry entry and the
    dotted path of the blocks (for full layer names)."""

    cfg: QuantConfig
    arch: Arch

    def layers(self, i: int, block: nn.Module) -> list[str]:
        """The block's Linear layers to quantize, in execution order (registry order first)."""
        found = block_linears(block)
        names = [n for n in self.arch.linears if n in found] + [n for n in found if n not in self.arch.linears]
        return [n for n in names if not is_skipped(self.full(i, n), self.cfg.modules_to_not_convert)]

    def full(self, i: int, name: str) -> str:
        return f"{self.arch.blocks}.{i}.{name}"

    def swap(self, i: int, block: nn.Module, name: str, stats: object = None, algorithm=None) -> dict:
        layer, record = quantize_linear(self.full(i, name), block.get_submodule(name), self.cfg, stats, algorithm)
        set_module(block, name, layer)
        return record


def sequential_subsets(names: list[str], arch: Arch) -> list[list[str]]:
    """Layers in execution order, consecutive layers of one scale group (same input) together;
    layers the registry does not list form one last set."""
    group_of = {layer: g for g, sg in enumerate(arch.awq_groups) for layer in sg.layers}
    known = [n for n in names if n in arch.linears]
    subsets: list[list[str]] = []
    for n in known:
        g = group_of.get(n)
        if subsets and g is not None and group_of.get(subsets[-1][-1]) == g:
            subsets[-1].append(n)
        else:
            subsets.append([n])
    rest = [n for n in names if n not in arch.linears]
    return subsets + ([rest] if rest else [])


def rtn_block(ctx: BlockContext, i: int, block: nn.Module, runner: BlockRunner | None) -> list[dict]:
    return [ctx.swap(i, block, n) for n in ctx.layers(i, block)]


def frozen_parts(block: nn.Module, order: list[str], done: set[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """What can no longer change in a block, given the Linears in ``done`` (``order``: all
    its Linears in execution order): the direct submodules (containers such as self_attn,
    mlp) whose Linears and every Linear before them are done; and (submodule, its last
    Linear) pairs where everything up to that last Linear is done (its input is final)."""
    whole, tails = [], []
    for child, module in block.named_children():
        inside = [n for n in order if n.startswith(child + ".")]
        if isinstance(module, nn.Linear) or not inside:
            continue
        upto = order[: order.index(inside[-1]) + 1]
        if set(upto) <= done:
            whole.append(child)
        elif set(upto[:-1]) <= done:
            tails.append((child, inside[-1]))
    return whole, tails


def gptq_block(ctx: BlockContext, i: int, block: nn.Module, runner: BlockRunner) -> list[dict]:
    names = ctx.layers(i, block)
    subsets = sequential_subsets(names, ctx.arch) if ctx.cfg.true_sequential else [names]
    order = [n for subset in sequential_subsets(list(block_linears(block)), ctx.arch) for n in subset]
    done = set(order) - set(names)  # skipped layers stay as they are
    records = []
    whole, tails = frozen_parts(block, order, done)
    for child, linear in tails:
        runner.freeze_tail(child, linear)
    for subset in subsets:
        stats = runner.collect(subset, HessianStats.zeros)
        for n in subset:
            if n not in stats:
                log.warning("%s saw no calibration input; rounding it to nearest", ctx.full(i, n))
                records.append(ctx.swap(i, block, n, algorithm=ALGORITHMS["rtn"]))
            else:
                records.append(ctx.swap(i, block, n, stats[n]))
        del stats
        done.update(subset)
        whole, tails = frozen_parts(block, order, done)
        for child in whole:
            runner.freeze(child)
        for child, linear in tails:
            runner.freeze_tail(child, linear)
    return records


def awq_block(ctx: BlockContext, i: int, block: nn.Module, runner: BlockRunner) -> list[dict]:
    cfg = ctx.cfg
    names = ctx.layers(i, block)
    stats = runner.collect(names, HessianStats.zeros, stop_early=False)
    alphas: dict[str, float] = {}
    for group in ctx.arch.awq_groups:
        layers = [n for n in group.layers if n in stats]
        if not layers or len(layers) != len(group.layers):
            continue
        mods = [block.get_submodule(n) for n in layers]
        prev = block.get_submodule(group.prev)
        k = mods[0].in_features
        if not can_fold(prev, k):
            log.debug("AWQ: %s cannot take a scale for %s (shapes differ); group skipped", group.prev, layers)
            continue
        st = stats[layers[0]]
        W = torch.cat([m.weight.data.float() for m in mods])
        s, alpha, duo, losses = search_scale(W, st.x_mean, st.H / 2, cfg.bits, cfg.group_size, cfg.sym)
        fold_scale(prev, mods, s, ctx.arch.norm_offset)
        for unique in {id(stats[n]): stats[n] for n in layers}.values():
            rescale_stats(unique, s)
        alphas.update({n: (alpha, duo) for n in layers})
        log.debug("AWQ block %d %s: alpha %.2f%s, loss %.4g -> %.4g", i, layers, alpha, " (duo)" * duo,
                  losses[0], min(losses))
    records = []
    for n in names:
        clip = n.rsplit(".", 1)[-1] not in NO_CLIP

        def algorithm(W, st, cfg, clip=clip):
            return awq_quantize(W, st, cfg, clip=clip)

        rec = ctx.swap(i, block, n, stats.get(n), algorithm)
        if n in alphas:
            rec["awq_alpha"], rec["awq_duo"] = alphas[n]
        records.append(rec)
    return records


BLOCK_STEPS = {"rtn": rtn_block, "gptq": gptq_block, "awq": awq_block}
#: Methods whose block step needs calibration data.
CALIBRATED = ("gptq", "awq")
