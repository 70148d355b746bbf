"""Next-token choice for a batch of requests: greedy, temperature and nucleus (top-p) sampling.

Pure functions on logits; each request brings its own settings and its own
``torch.Generator`` so that a seeded request gives the same tokens whatever else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for. temperature 0 = greedy (argmax)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``; renormalize.

    probs: float [V] summing to 1. Returns float [V] (zeros outside the nucleus).
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(descending=True)
    # A token stays if the mass before it is still below top_p: the most likely token always stays.
    mass_before = sorted_p.cumsum(0) - sorted_p
    sorted_p = torch.where(mass_before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return kept / kept.sum()


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One next token per row.

    logits: float [B, V] (any device); params and generators: B entries (generators on CPU).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for i, p in enumerate(params):
        if p.temperature == 0.0:
            out.append(int(greedy[i]))
            continue
        probs = torch.softmax(logits[i].cpu() / p.temperature, dim=-1)
        probs = top_p_filter(probs, p.top_p)
        out.append(int(torch.multinomial(probs, 1, generator=generators[i]).item()))
    return out
