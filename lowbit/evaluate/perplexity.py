"""Perplexity with the GPTQ paper's protocol, plus a sliding-window variant.

    perplexity(model, tokenizer, text_or_dataset, seq_len=2048, stride=None,
               max_windows=None, progress=True, *, batch_size=1, split="test",
               data_dir=None) -> PerplexityResult

``text_or_dataset``:
- a dataset name, ``"wikitext2"`` or ``"pydocs"`` (see ``lowbit.evaluate.texts``; ``split``
  and ``data_dir`` pass through: ``data_dir`` is a folder with ``wikitext-2-test.txt`` for
  offline use), or a ``pathlib.Path`` of a .txt / .jsonl file / wikitext folder;
- any other ``str``: the text itself;
- a list of str: documents, joined with "\\n\\n";
- a LongTensor of token ids, [T] or [1, T] (already tokenized: ``tokenizer`` is unused).

Protocol (default, ``stride=None``): the text is tokenized once (with the tokenizer's special
tokens, e.g. Llama's BOS, as GPTQ does), cut into ``T // seq_len`` non-overlapping windows of
``seq_len`` tokens (the tail shorter than a window is dropped), each window is a separate
forward pass, and every token but the first of each window is predicted: NLL is the mean over
all ``windows * (seq_len - 1)`` predicted tokens, ``perplexity = exp(nll)``. This is GPTQ's
``exp(sum(loss_i * seqlen) / (n * seqlen))``.

Sliding window (``stride=S``, ``1 <= S <= seq_len``): windows of ``seq_len`` tokens start at
0, S, 2S, ... (only full windows); the first window scores its ``seq_len - 1`` predictable
tokens, each later one only its last ``S`` tokens (new ones, each seen with at least
``seq_len - S`` tokens of context). ``stride=seq_len`` gives exactly the default protocol.

``max_windows=K`` evaluates the first K windows only (quick checks).

``PerplexityResult``: perplexity, nll (nats per token), tokens (predicted tokens), windows,
seq_len, stride, seconds; ``.to_dict()`` for JSON.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import LowbitError
from .texts import is_dataset_name, join_rows, load_text

log = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood, nats per predicted token
    tokens: int  # predicted (scored) tokens
    windows: int
    seq_len: int
    stride: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window in the token stream
    score_from: int  # first in-window position whose token is scored (>= 1)


def plan_windows(n_tokens: int, seq_len: int, stride: int | None = None) -> list[Window]:
    """Full windows of ``seq_len`` tokens over ``n_tokens`` (see the module docstring)."""
    stride = seq_len if stride is None else stride
    if n_tokens < seq_len:
        return []
    count = 1 + (n_tokens - seq_len) // stride
    return [Window(i * stride, 1 if i == 0 else max(1, seq_len - stride)) for i in range(count)]


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """LongTensor [T] of ``text`` with the tokenizer's special tokens (GPTQ's protocol)."""
    if tokenizer is None:
        raise LowbitError("the model has no tokenizer: copy the tokenizer files into the model folder")
    # verbose=False: a whole corpus is longer than model_max_length by design.
    return tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]


def token_ids(tokenizer, text_or_dataset, split: str = "test", data_dir=None) -> torch.Tensor:
    """LongTensor [T] for any accepted ``text_or_dataset`` (see the module docstring)."""
    src = text_or_dataset
    if isinstance(src, torch.Tensor):
        if src.dim() == 2 and src.shape[0] == 1:
            src = src[0]
        if src.dim() != 1 or src.dtype not in (torch.int64, torch.int32):
            raise LowbitError(f"token ids must be an integer tensor [T] or [1, T], got {src.dtype} {tuple(src.shape)}")
        return src.long()
    if isinstance(src, Path) or is_dataset_name(src):
        return tokenize(tokenizer, load_text(src, split=split, data_dir=data_dir))
    if isinstance(src, str):
        return tokenize(tokenizer, src)
    if isinstance(src, Sequence) and all(isinstance(t, str) for t in src):
        return tokenize(tokenizer, join_rows(list(src)))
    raise LowbitError(f"cannot evaluate on a {type(src).__name__}: pass a text, a list of texts, a dataset name or token ids")


def max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(model: nn.Module, seq_len: int, stride: int | None = None) -> None:
    if seq_len < 2:
        raise LowbitError(f"seq-len {seq_len} is too short: a window needs at least 2 tokens")
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise LowbitError(f"seq-len {seq_len} is above the model's maximum of {limit} positions: pass --seq-len {limit} or less")
    if stride is not None and not 1 <= stride <= seq_len:
        raise LowbitError(f"stride {stride} must be between 1 and seq-len {seq_len}")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def token_nll(logits: torch.Tensor, ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """NLL [B, L-1] float64 of ids[:, 1:] under logits[:, :-1] ([B, L, V]: position j predicts j+1).

    In float64, a chunk of positions at a time: a float32 log-softmax over a ~50k vocabulary
    is off by up to ~3e-4 nats per token, which would show in a 1e-4 comparison.
    """
    b, length, vocab = logits.shape
    flat = logits[:, :-1].reshape(-1, vocab)  # [B*(L-1), V]
    target = ids[:, 1:].reshape(-1)
    parts = [F.cross_entropy(flat[i:i + chunk].double(), target[i:i + chunk], reduction="none")
             for i in range(0, flat.shape[0], chunk)]
    return torch.cat(parts).view(b, length - 1)


def _window_nll(model: nn.Module, batch: torch.Tensor, score_from: list[int]) -> tuple[float, int]:
    """(sum of NLL, scored tokens) of a batch of windows [B, L]."""
    out = model(input_ids=batch, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]  # [B, L, V]
    nll = token_nll(logits, batch)  # [B, L-1]
    total, count = 0.0, 0
    for row, start in zip(nll, score_from):
        total += row[start - 1:].sum().item()
        count += row.shape[0] - (start - 1)
    return total, count


@torch.inference_mode()
def perplexity(model: nn.Module, tokenizer, text_or_dataset, seq_len: int = 2048, stride: int | None = None,
               max_windows: int | None = None, progress: bool = True, *, batch_size: int = 1,
               split: str = "test", data_dir=None) -> PerplexityResult:
    """Perplexity of ``model`` on ``text_or_dataset`` (protocol in the module docstring)."""
    check_seq_len(model, seq_len, stride)
    if max_windows is not None and max_windows < 1:
        raise LowbitError(f"max-windows {max_windows} must be at least 1")
    if batch_size < 1:
        raise LowbitError(f"batch size {batch_size} must be at least 1")
    ids = token_ids(tokenizer, text_or_dataset, split=split, data_dir=data_dir)
    windows = plan_windows(ids.numel(), seq_len, stride)
    if not windows:
        raise LowbitError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}: "
                          "pass a smaller --seq-len or a longer text")
    if max_windows is not None:
        windows = windows[:max_windows]
    device = _model_device(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    total, count = 0.0, 0
    bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            batch = torch.stack([ids[w.begin:w.begin + seq_len] for w in chunk]).to(device)  # [B, seq_len]
            s, c = _window_nll(model, batch, [w.score_from for w in chunk])
            total += s
            count += c
            bar.update(len(chunk))
            bar.set_postfix(ppl=f"{math.exp(min(total / count, 700)):.3f}")
    finally:
        bar.close()
        model.train(was_training)
    nll = total / count
    if not math.isfinite(nll):
        log.warning("perplexity: the NLL is not finite (%s): the model produces inf/nan logits", nll)
    ppl = math.inf if nll >= 700 else math.exp(nll)
    return PerplexityResult(perplexity=ppl, nll=nll, tokens=count, windows=len(windows), seq_len=seq_len,
                            stride=stride, seconds=time.perf_counter() - start)
