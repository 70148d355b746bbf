"""Capture what the first decoder block receives, without running the blocks.

``capture`` runs the model once per calibration batch with every block's forward replaced
by a recorder: block 0's recorder keeps its input hidden states, every block's recorder
keeps the other arguments the model passes it (attention mask, rotary embeddings, position
ids: they differ between layers in models with sliding-window layers) and passes its input
through, and the last one stops the forward before the head. A probe on 4 tokens first
learns how a block and its submodules return their outputs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a forward pass to skip the rest of it."""


@dataclass
class Activations:
    """hidden: per batch [b, L, hidden], the inputs of the current block (on the device);
    calls[i][j]: (extra positional args, kwargs) the model passes block i for batch j."""

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]
    as_output: Callable[[torch.Tensor], object]
    #: output structure of each direct submodule of a block: 0 for a tensor, n for a tuple
    #: of n whose first element is the tensor (attention modules return (out, weights))
    child_outputs: dict[str, int] = field(default_factory=dict)
    #: (submodule, "out" | "tail") -> whether replaying it was checked to give the block
    #: output that recomputing gives (missing: not checked yet)
    replay_ok: dict[tuple[str, str], bool] = field(default_factory=dict)


@contextlib.contextmanager
def _patched_forwards(blocks: Iterable[nn.Module], make: Callable[[int, nn.Module], Callable]):
    """Replace each block's forward (instance attribute) for the duration."""
    saved = []
    try:
        for i, block in enumerate(blocks):
            saved.append((block, block.__dict__.get("forward")))
            block.forward = make(i, block)
        yield
    finally:
        for block, fwd in saved:
            if fwd is None:
                del block.forward
            else:
                block.forward = fwd


def _run_model(model: nn.Module, ids: torch.Tensor) -> None:
    try:
        model(input_ids=ids.to(model.get_input_embeddings().weight.device), use_cache=False)
    except StopForward:
        return
    raise RuntimeError("the model's forward did not reach its last decoder block")


def _output_structure(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor) -> tuple[Callable, dict[str, int]]:
    """How a block returns its hidden states: a tensor (transformers 5) or a tuple that starts
    with it (older versions); and how each of its direct submodules returns its output.
    Learned from block 0 on a 4-token input."""
    found: dict[str, int] = {}

    def make(i, block):
        original = type(block).forward.__get__(block)

        def probe(*args, **kwargs):
            def record(name):
                def hook(module, args, out):  # returns None: the output is kept
                    found.setdefault(name, _arity(out))

                return hook

            hooks = [m.register_forward_hook(record(n)) for n, m in block.named_children()]
            try:
                out = original(*args, **kwargs)
            finally:
                for h in hooks:
                    h.remove()
            found[""] = _arity(out)
            raise StopForward

        return probe if i == 0 else (lambda *a, **k: None)

    with _patched_forwards(blocks, make):
        _run_model(model, ids[:1, :4])
    n = found.pop("")
    return (lambda h: (h,) + (None,) * (n - 1)) if n else (lambda h: h), found


def _arity(out) -> int:
    return len(out) if isinstance(out, tuple) else 0


@torch.no_grad()
def capture(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int,
            device: torch.device) -> Activations:
    """Inputs of block 0 (on ``device``) and every block's call arguments, per batch."""
    as_output, child_outputs = _output_structure(model, blocks, input_ids)
    hidden: list[torch.Tensor] = []
    calls: list[list] = [[] for _ in blocks]
    last = len(blocks) - 1

    def make(i, block):
        def record(hidden_states, *args, **kwargs):
            calls[i].append((args, kwargs))
            if i == 0:
                hidden.append(hidden_states.to(device))
            if i == last:
                raise StopForward
            return as_output(hidden_states)

        return record

    with _patched_forwards(blocks, make):
        for batch in input_ids.split(batch_size):
            _run_model(model, batch)
    return Activations(hidden, calls, as_output, child_outputs)
