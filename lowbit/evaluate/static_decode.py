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

``fused`` (default on CUDA with triton, for models without per-head q/k norms): the q/k/v
and gate/up projections are concatenated into one layer each (float Linear or QuantLinear
alike; built once, the model is not modified, this costs their memory once more) and the
elementwise glue runs as a few fused kernels (``lowbit.kernels.triton.fused``): 8 launches
a layer instead of ~40 (norm, q|k|v, rope + cache write + attention, o, add + norm,
gate|up, silu * up, down), and one after the logits (argmax, next input, position + 1),
for the float and the quantized model alike. A quantized gate|up interleaves its outputs
and forms silu(gate) * up in the GEMV's epilogue (``SiluGateUp``): 7 launches a layer.

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


def merge_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing the concatenated outputs of ``layers`` (same input), or None.

    Float nn.Linear: weights concatenated. QuantLinear: packed buffers concatenated along
    the output dim, which needs equal bits, group size and g_idx, and outputs that fill
    whole zero-point words.
    """
    from ..nn import QuantLinear

    first = layers[0]
    if any((l.bias is None) != (first.bias is None) for l in layers):
        return None
    bias = None if first.bias is None else torch.cat([l.bias.detach() for l in layers])
    if all(type(l) is nn.Linear for l in layers):
        merged = nn.Linear(first.in_features, sum(l.out_features for l in layers), bias=bias is not None,
                           device="meta")
        merged.weight = nn.Parameter(torch.cat([l.weight.detach() for l in layers]), requires_grad=False)
        if bias is not None:
            merged.bias = nn.Parameter(bias, requires_grad=False)
        return merged
    if all(isinstance(l, QuantLinear) for l in layers):
        per_word = 32 // first.bits
        if any(l.bits != first.bits or l.group_size != first.group_size or not torch.equal(l.g_idx, first.g_idx)
               or l.out_features % per_word or 32 % l.bits for l in layers):
            return None
        merged = QuantLinear.empty(first.in_features, sum(l.out_features for l in layers), first.bits,
                                   first.group_size, bias is not None, first.scales.dtype)
        merged.qweight = torch.cat([l.qweight for l in layers], dim=1)
        merged.qzeros = torch.cat([l.qzeros for l in layers], dim=1)
        merged.scales = torch.cat([l.scales for l in layers], dim=1)
        merged.g_idx = first.g_idx
        if bias is not None:
            merged.bias = bias
        return merged
    return None


def interleave_outputs(layer: nn.Module) -> nn.Module:
    """A QuantLinear with outputs [a | b] (N = 2F) reordered to a_0, b_0, a_1, b_1, ...: the
    same weights, buffers permuted along N (zero points unpacked and packed again)."""
    from ..formats import pack, unpack
    from ..nn import QuantLinear

    n, f = layer.out_features, layer.out_features // 2
    order = torch.stack([torch.arange(f), torch.arange(f, n)], dim=1).flatten().to(layer.qweight.device)
    out = QuantLinear.empty(layer.in_features, n, layer.bits, layer.group_size, layer.bias is not None,
                            layer.scales.dtype)
    out.qweight = layer.qweight.index_select(1, order)
    zeros = unpack(layer.qzeros, layer.bits, n, dim=1).to(torch.int64).index_select(1, order)
    out.qzeros = pack(zeros, layer.bits, dim=1)
    out.scales = layer.scales.index_select(1, order)
    out.g_idx = layer.g_idx
    if layer.bias is not None:
        out.bias = layer.bias.index_select(0, order)
    return out


class SiluGateUp(nn.Module):
    """silu(gate(x)) * up(x) from one QuantLinear whose outputs interleave gate and up
    (``interleave_outputs``): at one token the int4 GEMV forms the product in its epilogue
    (op "int_group_silu"), so the step has no separate silu * up kernel."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .. import kernels

        return kernels.dispatch("int_group_silu", x, self.layer)


def _fused_kernels_available(device: torch.device) -> bool:
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


class StaticDecoder:
    """Static-cache greedy decoder over a transformers Llama-style causal LM."""

    def __init__(self, model: nn.Module, max_len: int, batch: int = 1, cuda_graph: bool = True,
                 fused: bool | None = None) -> None:
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
        # The fused kernels take a power-of-two head size (a Triton block) and no q/k norms.
        plain = not any(hasattr(layer.self_attn, "q_norm") for layer in self.layers) \
            and self.head_dim & (self.head_dim - 1) == 0
        self.fused = (fused if fused is not None else self.device.type == "cuda") and plain \
            and _fused_kernels_available(self.device)
        if self.fused:
            self.qkv = [merge_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]) for l in self.layers]
            self.act_is_silu = all(type(l.mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") for l in self.layers)
            self.gate_up = [self._merge_gate_up(l.mlp) for l in self.layers]

    def _merge_gate_up(self, mlp: nn.Module) -> nn.Module | None:
        """gate|up as one layer; quantized and SiLU: interleaved, with the product fused."""
        from ..nn import QuantLinear

        merged = merge_linears([mlp.gate_proj, mlp.up_proj])
        if isinstance(merged, QuantLinear) and self.act_is_silu:
            return SiluGateUp(interleave_outputs(merged))
        return merged

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for tokens ids [B, T] at positions pos [T] (int64), caching K/V."""
        if self.fused:
            return self._forward_fused(ids, pos)
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

    def _forward_fused(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``forward`` with merged projections and the fused glue kernels."""
        from ..kernels.triton import fused

        b, t = ids.shape
        res = self.decoder.embed_tokens(ids).reshape(b * t, -1)  # the residual stream [R, H]
        first = self.layers[0].input_layernorm
        x = fused.add_rmsnorm(res, None, first.weight, first.variance_epsilon)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            if self.qkv[i] is not None:
                qkv = self.qkv[i](x)
            else:
                qkv = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
            scale = getattr(attn, "scaling", self.head_dim ** -0.5)
            if t == 1:
                o = fused.rope_attention(qkv.view(b, t, -1), self.cos, self.sin, pos, self.k_cache[i],
                                         self.v_cache[i], self.heads, self.kv_heads, scale)
            else:
                q = fused.rope_cache(qkv.view(b, t, -1), self.cos, self.sin, pos, self.k_cache[i], self.v_cache[i],
                                     self.heads, self.kv_heads)
                mask = torch.arange(self.max_len, device=ids.device)[None, :] <= pos[:, None]
                o = F.scaled_dot_product_attention(q, self.k_cache[i], self.v_cache[i], attn_mask=mask, scale=scale,
                                                   enable_gqa=True).transpose(1, 2)
            a = attn.o_proj(o.reshape(b * t, -1))
            post = layer.post_attention_layernorm
            x = fused.add_rmsnorm(a, res, post.weight, post.variance_epsilon)
            mlp = layer.mlp
            if isinstance(self.gate_up[i], SiluGateUp):
                m = self.gate_up[i](x)
            elif self.gate_up[i] is not None and self.act_is_silu:
                m = fused.silu_mul(self.gate_up[i](x))
            else:
                m = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            d = mlp.down_proj(m)
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.decoder.norm
            x = fused.add_rmsnorm(d, res, nxt.weight, nxt.variance_epsilon)
        return self.model.lm_head(x).view(b, t, -1)

    def _step(self) -> None:
        """One token: logits at the current position -> argmax -> next input, position + 1."""
        logits = self.forward(self.token, self.pos)
        if self.fused:
            from ..kernels.triton import fused

            fused.greedy_advance(logits[:, -1], self.token, self.out, self.pos, self.start, self.scratch)
            return
        nxt = logits[:, -1].argmax(dim=-1)  # [B]
        self.out.index_copy_(1, self.pos - self.start, nxt[:, None])
        self.token.copy_(nxt[:, None])
        self.pos.add_(1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
        """Greedy continuation: (ids [B, T + new_tokens], seconds spent on the decode steps).

        The first new token comes from the prompt's forward pass (prefill, timed into
        ``self.prefill_seconds``); the other ``new_tokens - 1`` are decode steps, replayed
        from the CUDA graph when enabled.
        """
        b, t = prompt.shape
        if b != self.batch or t + new_tokens > self.max_len:
            raise LowbitError(f"prompt [{b}, {t}] + {new_tokens} tokens does not fit batch {self.batch}, "
                              f"max_len {self.max_len}")
        prompt = prompt.to(self.device)
        self._sync()
        t0 = time.perf_counter()
        logits = self.forward(prompt, torch.arange(t, device=self.device))
        first = logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
        self._sync()
        self.prefill_seconds = time.perf_counter() - t0  # time to the first token
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
            self.scratch = torch.zeros(self.batch + 1, dtype=torch.long, device=self.device)  # greedy_advance's
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
