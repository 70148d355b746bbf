"""Memory of a model in memory: bytes of parameters and buffers, in total and by dtype."""
from __future__ import annotations

from collections import Counter

from torch import nn


def _tensors(model: nn.Module):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key in seen:  # tied weights count once
            continue
        seen.add(key)
        yield t


def memory_footprint(model: nn.Module) -> int:
    """Bytes of parameters and buffers, tied tensors counted once."""
    return sum(t.numel() * t.element_size() for t in _tensors(model))


def bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for t in _tensors(model):
        counts[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
    return dict(counts)
