"""Latency and throughput of greedy generation: time to first token, prefill and decode speed.

    bench(model, batch_sizes=(1,), prompt_len=512, new_tokens=128, repeats=5, warmup=1,
          progress=True, seed=0) -> list[BenchResult]   (one per batch size)

One run at batch size B: a prompt of random token ids [B, prompt_len] (seeded; the same for
every model of a comparison) goes through one forward pass with a KV cache (prefill: time to
first token, TTFT, includes picking that token), then ``new_tokens - 1`` single-token forward
passes with the cache (decode). Greedy, no stopping at EOS, so every run does the same work.

- prefill tok/s = B * prompt_len / TTFT
- decode tok/s  = B * (new_tokens - 1) / decode time

``static=True`` runs the same greedy generation through ``StaticDecoder`` instead (static
KV cache, one CUDA graph replay per decode step on CUDA, merged projections and fused
kernels; llama, mistral, qwen2, qwen3). It holds the merged q|k|v and gate|up weights a
second time, which the peak memory shows.

Each figure is the median over ``repeats`` runs after ``warmup`` untimed runs, with min and
max (``Stat``); CUDA work is synchronized before every clock read. ``weight_bytes`` is the
model's parameters + buffers; ``peak_bytes`` is CUDA max_memory_allocated over the timed
runs, or the process's peak RSS on CPU (see ``memory.PeakMemory``).
"""
from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LowbitError
from .memory import PeakMemory, memory_footprint
from .perplexity import _model_device, max_positions


@dataclass
class Stat:
    """Median of repeated measurements, with their min and max (the spread)."""

    median: float
    min: float
    max: float
    runs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        return cls(statistics.median(values), min(values), max(values), list(values))

    def spread_pct(self) -> float:
        """(max - min) / median, in percent."""
        return 100.0 * (self.max - self.min) / self.median if self.median else 0.0

    def __str__(self) -> str:
        return f"{fmt_num(self.median)} [{fmt_num(self.min)}-{fmt_num(self.max)}]"


def fmt_num(x: float) -> str:
    """Three or so significant digits, thousands separated: 16,260 / 844 / 12.3 / 1.82."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


@dataclass
class BenchResult:
    batch_size: int
    prompt_len: int
    new_tokens: int
    ttft_s: Stat
    prefill_tok_s: Stat
    decode_tok_s: Stat
    weight_bytes: int
    peak_bytes: int
    peak_kind: str
    device: str
    dtype: str
    decoder: str = "transformers"  # or "static" (StaticDecoder)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _one_run(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(TTFT seconds, decode seconds) of one greedy generation from ``prompt`` [B, L]."""
    device = prompt.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    _sync(device)
    t1 = time.perf_counter()
    cache = out.past_key_values
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _one_run_static(dec, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """``_one_run`` through a StaticDecoder (the first call also captures the CUDA graph,
    outside both timings)."""
    _, decode = dec.generate(prompt, new_tokens)
    return dec.prefill_seconds, decode


def check_bench_args_static(batch_sizes, prompt_len: int, new_tokens: int, repeats: int) -> None:
    """Checks that need no model."""
    sizes = list(batch_sizes) if isinstance(batch_sizes, (list, tuple)) else [batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise LowbitError(f"batch sizes {sizes} must be positive numbers, e.g. --batch-sizes 1,8")
    if prompt_len < 1:
        raise LowbitError(f"prompt-len {prompt_len} must be at least 1")
    if new_tokens < 2:
        raise LowbitError(f"new-tokens {new_tokens} must be at least 2 (one prefill token, then decode steps)")
    if repeats < 1:
        raise LowbitError(f"repeats {repeats} must be at least 1")


def check_bench_args(model: nn.Module, batch_sizes, prompt_len: int, new_tokens: int, repeats: int) -> None:
    check_bench_args_static(batch_sizes, prompt_len, new_tokens, repeats)
    limit = max_positions(model)
    if limit is not None and prompt_len + new_tokens > limit:
        raise LowbitError(f"prompt-len + new-tokens = {prompt_len + new_tokens} is above the model's maximum of "
                          f"{limit} positions: shorten the prompt or the generation")


@torch.inference_mode()
def bench(model: nn.Module, batch_sizes=(1,), prompt_len: int = 512, new_tokens: int = 128, repeats: int = 5,
          warmup: int = 1, progress: bool = True, seed: int = 0, static: bool = False) -> list[BenchResult]:
    """Speed and memory of greedy generation, one ``BenchResult`` per batch size."""
    batch_sizes = list(batch_sizes)
    check_bench_args(model, batch_sizes, prompt_len, new_tokens, repeats)
    model.eval()
    device = _model_device(model)
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    results = []
    bar = tqdm(total=len(batch_sizes) * (warmup + repeats), desc="bench", unit="run", disable=not progress)
    try:
        for b in batch_sizes:
            # Random ids away from the low (special) ids: the same work whatever the text.
            prompt = torch.randint(min(100, vocab - 1), vocab, (b, prompt_len), generator=gen).to(device)
            with PeakMemory(device) as peak:
                if static:
                    from .static_decode import StaticDecoder

                    try:
                        dec = StaticDecoder(model, max_len=prompt_len + new_tokens, batch=b)
                    except LowbitError as e:
                        raise LowbitError(f"{e}: bench it without static decoding") from None
                    one_run = functools.partial(_one_run_static, dec)
                else:
                    one_run = functools.partial(_one_run, model)
                for _ in range(warmup):
                    one_run(prompt, new_tokens)
                    bar.update(1)
                ttft, decode = [], []
                for _ in range(repeats):
                    t, d = one_run(prompt, new_tokens)
                    ttft.append(t)
                    decode.append(d)
                    bar.update(1)
            results.append(BenchResult(
                batch_size=b, prompt_len=prompt_len, new_tokens=new_tokens,
                ttft_s=Stat.of(ttft),
                prefill_tok_s=Stat.of([b * prompt_len / t for t in ttft]),
                decode_tok_s=Stat.of([b * (new_tokens - 1) / d for d in decode]),
                weight_bytes=memory_footprint(model), peak_bytes=peak.bytes, peak_kind=peak.kind,
                device=str(device), dtype=str(_float_dtype(model)).replace("torch.", ""),
                decoder="static" if static else "transformers",
            ))
            if static:
                del dec, one_run  # the merged weights and the graph go before the next batch size
    finally:
        bar.close()
    return results


def format_bench(results: list[BenchResult]) -> str:
    """A plain-text table of bench results: medians with [min-max]."""
    rows = [("batch", "TTFT ms", "prefill tok/s", "decode tok/s", "weights MiB", "peak MiB")]
    for r in results:
        rows.append((str(r.batch_size),
                     f"{r.ttft_s.median * 1e3:.1f} [{r.ttft_s.min * 1e3:.1f}-{r.ttft_s.max * 1e3:.1f}]",
                     str(r.prefill_tok_s), str(r.decode_tok_s),
                     f"{r.weight_bytes / 2**20:.1f}", f"{r.peak_bytes / 2**20:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    if results:
        r = results[0]
        how = "; decode: static KV cache, CUDA graph, fused kernels" if r.decoder == "static" else ""
        lines.append(f"(device {r.device}, {r.dtype}; prompt {r.prompt_len} tokens, {r.new_tokens} new tokens; "
                     f"median [min-max] of {len(r.ttft_s.runs)} runs; peak = {r.peak_kind}{how})")
    return "\n".join(lines)
