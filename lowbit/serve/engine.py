"""The embedded generation engine: one thread runs the model for all requests.

Continuous batching: requests wait in a bounded queue; before every decode step the engine
admits as many as there are free slots (up to ``max_batch_size``), prefills them together
(left-padded) and merges their KV cache into the running batch; finished or cancelled
requests leave the batch after any step. Rows are left-padded so every row's newest token sits
in the last cache column; the attention mask hides padding, and each row gets its own
position ids, so a request's tokens do not depend on what it is batched with (greedy answers
equal unbatched ones up to float rounding).

Models whose cache cannot be merged (sliding-window layers) fall back to step-level batching:
requests that arrive together run together; later ones wait for the batch to drain.

Results go to the ``on_output(Output)`` callback of each request, called from the engine
thread; the HTTP layer bridges it to asyncio.
"""
from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .batch import Batch, prefill_inputs
from .sampling import SamplingParams, sample
from .text import TextStream

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine refuses (the HTTP layer answers 400). ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class QueueFull(RuntimeError):
    """All batch slots are busy and the waiting queue is full (the HTTP layer answers 503)."""


@dataclass
class Output:
    """One event of a request: new text, and at the end the finish reason and usage."""

    text: str
    finish_reason: str | None  # None while running; "stop", "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Request:
    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, on_output: Callable[[Output], None],
                 tokenizer):
        self.id = next(Request._ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.on_output = on_output
        self.generated: list[int] = []
        self.text = TextStream(tokenizer, self.prompt_ids, params.stop)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        """Ask the engine to drop this request (client went away); safe from any thread."""
        self.cancelled = True


class Engine:
    """Generation for many concurrent requests on one model.

    model: a causal LM (transformers API: ``model(input_ids, attention_mask, position_ids,
    past_key_values, use_cache)``) in eval mode; tokenizer: its tokenizer.
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 8, max_model_len: int | None = None,
                 max_queue: int = 64):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_model_len = max_model_len or context_length(model)
        if self.max_model_len > context_length(model):
            log.warning("max_model_len %d is beyond the %d positions the model was trained for: answers past that "
                        "point may degrade", self.max_model_len, context_length(model))
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self._waiting: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._batch: Batch | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # model forwards (prefills + decode steps)
        self.finished: collections.Counter[str] = collections.Counter()  # requests by finish reason

    # -- public API (any thread) ------------------------------------------------------------

    def check(self, n_prompt: int, max_tokens: int | None) -> int:
        """Validate lengths against the context limit; returns max_tokens (default: all room left)."""
        limit = self.max_model_len
        if n_prompt < 1:
            raise RequestError("the prompt is empty: send at least one token of text", "prompt")
        if n_prompt >= limit:
            raise RequestError(f"the prompt has {n_prompt} tokens, but this server's limit (--max-model-len) is "
                               f"{limit} tokens for prompt and completion together: shorten the prompt", "prompt")
        room = limit - n_prompt
        if max_tokens is None:
            return room
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}", "max_tokens")
        if max_tokens > room:
            raise RequestError(f"max_tokens {max_tokens} is too large: the prompt has {n_prompt} tokens and the "
                               f"limit (--max-model-len) is {limit}, so at most {room} new tokens fit", "max_tokens")
        return max_tokens

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_output: Callable[[Output], None]) -> Request:
        """Queue a request; ``on_output`` gets its events from the engine thread."""
        self.check(len(prompt_ids), params.max_tokens)
        req = Request(prompt_ids, params, on_output, self.tokenizer)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are already waiting "
                                f"(--max-queue {self.max_queue}); retry later")
            self._waiting.append(req)
            self._cond.notify()
        self.start()
        return req

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> tuple[str, Output]:
        """Blocking convenience: (whole text, final Output)."""
        done = threading.Event()
        pieces: list[str] = []
        final: list[Output] = []

        def collect(out: Output) -> None:
            pieces.append(out.text)
            if out.finish_reason is not None:
                final.append(out)
                done.set()

        self.submit(prompt_ids, params, collect)
        done.wait()
        if final[0].finish_reason == "error":
            raise RuntimeError(final[0].error)
        return "".join(pieces), final[0]

    def stats(self) -> dict:
        with self._cond:
            return {"running": len(self._batch.requests) if self._batch else 0, "waiting": len(self._waiting),
                    "max_batch_size": self.max_batch_size, "max_model_len": self.max_model_len, "steps": self.steps, "finished": dict(self.finished)}

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="lowbit-engine", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and self._batch is None:
                    self._cond.wait()
                if self._closed:
                    break
                new = self._admit()
            try:
                with torch.inference_mode():
                    self._step(new)
            except Exception as e:  # a failed forward must not kill the server: fail these requests
                log.exception("generation step failed")
                failed = (self._batch.requests if self._batch else []) + new
                self._batch = None
                for req in failed:
                    self._finish(req, "error", error=f"generation failed: {type(e).__name__}: {e}")
        for req in list(self._waiting) + (self._batch.requests if self._batch else []):
            self._finish(req, "cancelled")

    def _admit(self) -> list[Request]:
        """Waiting requests that join now (called under the lock)."""
        running = len(self._batch.requests) if self._batch else 0
        if self._batch is not None and not self._batch.mergeable:
            return []
        new = []
        while self._waiting and running + len(new) < self.max_batch_size:
            req = self._waiting.popleft()
            if req.cancelled:
                self._finish(req, "cancelled")
            else:
                new.append(req)
        return new

    def _step(self, new: list[Request]) -> None:
        if new:
            self._prefill(new)
        self._prune()
        if self._batch is not None:
            self._decode()
            self._prune()

    def _prune(self) -> None:
        """Drop finished and cancelled rows from the running batch."""
        if self._batch is not None:
            for r in self._batch.requests:
                if r.cancelled:
                    self._finish(r, "cancelled")
            live = [not r.finished for r in self._batch.requests]
            with self._cond:  # stats() reads the batch from other threads
                self._batch = self._batch.keep(live)

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        self.steps += 1
        return out.logits[:, -1, :], out.past_key_values

    def _prefill(self, new: list[Request]) -> None:
        from transformers import DynamicCache

        ids, mask, pos = prefill_inputs([r.prompt_ids for r in new], self.pad_id, self.device)
        logits, cache = self._forward(ids, mask, pos, DynamicCache(config=self.model.config))
        tokens = sample(logits, [r.params for r in new], [r.generator for r in new])
        batch = Batch(new, cache, mask, pos[:, -1] + 1, torch.tensor(tokens, device=self.device))
        self._batch = batch if self._batch is None else self._batch.merge(batch)
        for req, tok in zip(new, tokens):
            self._emit(req, tok)

    def _decode(self) -> None:
        b = self._batch
        mask = F.pad(b.mask, (0, 1), value=1)
        logits, b.cache = self._forward(b.last[:, None], mask, b.next_pos[:, None], b.cache)
        b.mask, b.next_pos = mask, b.next_pos + 1
        tokens = sample(logits, [r.params for r in b.requests], [r.generator for r in b.requests])
        b.last = torch.tensor(tokens, device=self.device)
        for req, tok in zip(b.requests, tokens):
            self._emit(req, tok)

    def _emit(self, req: Request, token: int) -> None:
        if req.cancelled:
            self._finish(req, "cancelled")
            return
        req.generated.append(token)
        if token in self.eos_ids:
            self._finish(req, "stop", req.text.flush())
            return
        piece, stopped = req.text.add(token)
        if stopped:
            self._finish(req, "stop", piece)
        elif len(req.generated) >= req.params.max_tokens or \
                len(req.prompt_ids) + len(req.generated) >= self.max_model_len:
            self._finish(req, "length", piece + req.text.flush())
        elif piece:
            self._deliver(req, Output(piece, None, len(req.prompt_ids), len(req.generated)))

    def _finish(self, req: Request, reason: str, text: str = "", error: str | None = None) -> None:
        if req.finished:
            return
        req.finished = True
        with self._cond:  # an RLock: _admit calls this while holding it
            self.finished[reason] += 1
        self._deliver(req, Output(text, reason, len(req.prompt_ids), len(req.generated), error))

    @staticmethod
    def _deliver(req: Request, out: Output) -> None:
        try:
            req.on_output(out)
        except Exception:  # a broken consumer must not stop the other requests
            log.exception("request %d: output callback failed; cancelling it", req.id)
            req.cancelled = True


def context_length(model) -> int:
    """The model's context window from its config (positions it was trained for)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def eos_token_ids(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                   tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids
