"""Greedy decoding with a static KV cache, one CUDA graph per token.

At batch 1 a decode step is ~200 small kernels; launched from Python they take longer
than the GPU needs to run them, which hides any kernel speedup. Here the step has static
shapes (the cache is preallocated to ``max_len``; attention reads all of it under a mask),
so it is captured once in a CUDA graph, together with the argmax and the position update,
and each token is one graph replay with no host synchronization.

The forward is written out for Llama-style decoders (llama, mistral, qwen2, qwen3: pre-norm
blocks, rotary attention with grouped KV heads, gated MLP); it calls the model's own
modules, so quantized layers run their own kernels. Works on CPU too (no graph), where the
tests compare it with the transformers forward.

    dec = StaticDecoder(model, max_len=1024)
    tokens, seconds = dec.generate(prompt_ids [1, T], new_tokens=128)   # LongTensor [1, T + new]
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LowbitError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class StaticDecoder:
    """Static-cache greedy decoder over a transformers Llama-style causal LM."""

    def __init__(self, model: nn.Module, max_len: int, batch: int = 1, cuda_graph: bool = True) -> None:
        cfg = model.config
        if cfg.model_type not in SUPPORTED:
            raise LowbitError(f"static decoding supports {', '.join(SUPPORTED)} models, not {cfg.model_type!r}")
        self.model = model
        self.decoder = model.model
        self.layers = list(self.decoder.layers)
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.max_len = max_len
        self.batch = batch
        emb = self.decoder.embed_tokens.weight
        self.device, self.dtype = emb.device, emb.dtype
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        positions = torch.arange(max_len, device=self.device)[None]
        cos, sin = self.decoder.rotary_emb(emb[:1, None], positions)  # [1, max_len, head_dim]
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for tokens ids [B, T] at positions pos [T] (int64), caching K/V."""
        b, t = ids.shape
        h = self.decoder.embed_tokens(ids)  # [B, T, H]
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]  # [1, 1, T, D]
        # Key j is visible from query i when j <= pos[i]: causal, and slots not yet written stay hidden.
        mask = torch.arange(self.max_len, device=ids.device)[None, :] <= pos[:, None]  # [T, max_len]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, t, self.heads, self.head_dim)
            k = attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
            v = attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
            if hasattr(attn, "q_norm"):  # qwen3: per-head RMSNorm before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k_cache[i].index_copy_(2, pos, k)
            self.v_cache[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask,
                                               scale=getattr(attn, "scaling", None), enable_gqa=True)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            x = layer.post_attention_layernorm(h)
            mlp = layer.mlp
            h = h + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        return self.model.lm_head(self.decoder.norm(h))

    def _step(self) -> None:
        """One token: logits at the current position -> argmax -> next input, position + 1."""
        logits = self.forward(self.token, self.pos)
        nxt = logits[:, -1].argmax(dim=-1)  # [B]
        self.out.index_copy_(1, self.pos - self.start, nxt[:, None])
        self.token.copy_(nxt[:, None])
        self.pos.add_(1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
        """Greedy continuation: (ids [B, T + new_tokens], seconds spent on the decode steps).

        The first new token comes from the prompt's forward pass (prefill); the other
        ``new_tokens - 1`` are decode steps, replayed from the CUDA graph when enabled.
        """
        b, t = prompt.shape
        if b != self.batch or t + new_tokens > self.max_len:
            raise LowbitError(f"prompt [{b}, {t}] + {new_tokens} tokens does not fit batch {self.batch}, "
                              f"max_len {self.max_len}")
        prompt = prompt.to(self.device)
        logits = self.forward(prompt, torch.arange(t, device=self.device))
        first = logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
        self._static(first, t, new_tokens)
        steps = new_tokens - 1
        if self.use_graph and steps > 0:
            self._capture(first, t)
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        self._sync()
        seconds = time.perf_counter() - start
        return torch.cat([prompt, first, self.out[:, :steps]], dim=1), seconds

    def _static(self, first: torch.Tensor, t: int, new_tokens: int) -> None:
        """Fresh static inputs: token [B, 1], pos [1], out [B, new_tokens] (graph addresses stay)."""
        if not hasattr(self, "token"):
            self.token = torch.empty_like(first)
            self.pos = torch.empty(1, dtype=torch.long, device=self.device)
            self.start = torch.empty(1, dtype=torch.long, device=self.device)
            self.out = torch.zeros(self.batch, self.max_len, dtype=torch.long, device=self.device)
        self.token.copy_(first)
        self.pos.fill_(t)
        self.start.fill_(t)

    def _capture(self, first: torch.Tensor, t: int) -> None:
        """Warm up (compiles kernels, repacks weights, sizes workspaces), then capture one step.
        The warm-up steps wrote the cache past the prompt; those slots are overwritten before
        any query can see them (the mask hides positions beyond the current one)."""
        if self.graph is None:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()
        self._static(first, t, 0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
