"""The running batch of the engine: requests, their KV cache, attention mask and positions.

Layout (B rows, T cache columns): every row is left-padded so that its newest token is in the
last column. ``mask`` [B, T] int64 marks real tokens (1) and padding (0); ``next_pos`` [B]
is the position id of each row's next token (its number of real tokens); ``last`` [B] is the
token each row feeds at the next step. The cache holds per layer keys/values [B, H, T, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prefill_inputs(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], attention_mask [B, L], position_ids [B, L]) of left-padded prompts."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, length - len(p):] = 1
    # Padding gets position 0: it is masked out, any position works.
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), pos.to(device)


def _full_attention_layers(cache) -> list | None:
    """The cache's layers when all are plain full-attention DynamicLayers (mergeable), else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return list(layers)


class Batch:
    def __init__(self, requests: list, cache, mask: torch.Tensor, next_pos: torch.Tensor, last: torch.Tensor):
        self.requests = requests
        self.cache = cache
        self.mask = mask
        self.next_pos = next_pos
        self.last = last

    @property
    def mergeable(self) -> bool:
        """Whether new requests can join (the cache is plain tensors we can pad and concatenate)."""
        return _full_attention_layers(self.cache) is not None

    def keep(self, rows: list[bool]) -> "Batch | None":
        """This batch with only the rows marked True (None when none is left)."""
        if all(rows):
            return self
        if not any(rows):
            return None
        idx = torch.tensor([i for i, k in enumerate(rows) if k], device=self.mask.device)
        self.cache.batch_select_indices(idx)
        mask = self.mask.index_select(0, idx)
        batch = Batch([r for r, k in zip(self.requests, rows) if k], self.cache, mask,
                      self.next_pos.index_select(0, idx), self.last.index_select(0, idx))
        batch._trim_padding()
        return batch

    def _trim_padding(self) -> None:
        """Drop leading columns that are padding in every row (left after long rows finished)."""
        layers = _full_attention_layers(self.cache)
        if layers is None:
            return
        start = int(self.mask.any(dim=0).int().argmax())
        if start > 0:
            self.mask = self.mask[:, start:]
            for layer in layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]

    def merge(self, other: "Batch") -> "Batch":
        """One batch with this batch's rows then ``other``'s, both left-padded to one length."""
        mine, theirs = _full_attention_layers(self.cache), _full_attention_layers(other.cache)
        if mine is None or theirs is None:
            raise RuntimeError("cannot merge KV caches of sliding-window or uninitialized layers")
        length = max(self.mask.shape[1], other.mask.shape[1])

        def left_pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - t.shape[-dim_from_end]
            if missing == 0:
                return t
            pad = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(t, pad)

        for a, b in zip(mine, theirs):
            # keys/values [B, H, T, D]: T is the second dim from the end.
            a.keys = torch.cat([left_pad(a.keys, 2), left_pad(b.keys, 2)])
            a.values = torch.cat([left_pad(a.values, 2), left_pad(b.values, 2)])
        self.mask = torch.cat([left_pad(self.mask, 1), left_pad(other.mask, 1)])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.last = torch.cat([self.last, other.last])
        self.requests = self.requests + other.requests
        return self
