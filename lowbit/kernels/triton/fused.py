"""Small fused kernels for a decode step (lowbit.evaluate.static_decode): at batch 1 each
torch elementwise op is its own launch, and a Llama layer is ~40 of them; these make it 8
(norm, q|k|v, rope + cache write + attention, o, add + norm, gate|up, silu * up, down; 7
when the int4 GEMV forms silu * up in its epilogue).

    add_rmsnorm(x, residual, weight, eps) -> normed; residual += x in place (x [R, H])
    rope_cache(qkv, cos, sin, pos, k_cache, v_cache, heads, kv_heads) -> q [B, heads, T, D]
    rope_attention(qkv, cos, sin, pos, k_cache, v_cache, heads, kv_heads, scale) -> o [B, 1, heads * D]
        (T = 1: the rotation, the cache write and the attention in one launch)
    silu_mul(gate_up [R, 2F]) -> [R, F]
    greedy_advance(logits [B, V], token, out, pos, start): argmax, written where the next
        step reads it, position + 1 (what a decode step does after its logits, one launch)
Numerics follow transformers' Llama: residual sums rounded to the model dtype, norms and
softmax in float32. All of them are PDL-aware (``pdl``): they wait for the kernel ahead
before reading anything it may have written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import pdl
from .pdl import release, wait


@triton.jit
def _add_rmsnorm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, H, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr):
    release(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    wait(PDL)
    x = tl.load(x_ptr + row * H + cols, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(res_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(res_ptr.dtype.element_ty)  # the residual stream is kept in the model dtype
        tl.store(res_ptr + row * H + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / H
    y = (xf * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * H + cols, (w.to(tl.float32) * y.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x + residual) * weight; the sum is written back into ``residual``. x [R, H]."""
    h = x.shape[-1]
    out = torch.empty_like(x)
    _add_rmsnorm_kernel[(x.numel() // h,)](x, residual if residual is not None else x, weight, out, h, eps,
                                           HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(h),
                                           num_warps=4, **pdl.launch_args(x.device))
    return out


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, F, BLOCK: tl.constexpr, INTERLEAVED: tl.constexpr, PDL: tl.constexpr):
    release(PDL)
    wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    if INTERLEAVED:  # gate of feature i at column 2i, up at 2i + 1
        g_off = 2 * cols
        u_off = 2 * cols + 1
    else:  # [gate | up]
        g_off = cols
        u_off = F + cols
    g = tl.load(gu_ptr + row * 2 * F + g_off, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * F + u_off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * F + cols, (g / (1.0 + tl.exp(-g)) * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """silu(gate) * up in float32, rounded once: [R, 2F] -> [R, F], gate_up = [gate | up]
    along the last dim, or with ``interleaved`` gate and up of feature i at columns 2i, 2i + 1
    (as ``reference.silu_pairs``). gate_up contiguous."""
    f = gate_up.shape[-1] // 2
    rows = gate_up.numel() // (2 * f)
    out = torch.empty(*gate_up.shape[:-1], f, dtype=gate_up.dtype, device=gate_up.device)
    _silu_mul_kernel[(rows, triton.cdiv(f, 1024))](gate_up, out, f, BLOCK=1024, INTERLEAVED=interleaved, num_warps=4,
                                                   **pdl.launch_args(gate_up.device))
    return out


@triton.jit
def _rotated(row, cos, sin, d, D: tl.constexpr):
    """rotate-half RoPE of the head at ``row`` (pointer to D values), float32 [D]."""
    x = tl.load(row + d).to(tl.float32)
    partner = tl.load(row + (d + D // 2) % D).to(tl.float32)
    return x * cos + tl.where(d < D // 2, -partner, partner) * sin


@triton.jit
def _rope_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, T, S,
                       HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr):
    release(PDL)
    wait(PDL)
    bt = tl.program_id(0)  # b * T + t
    head = tl.program_id(1)  # [0, HEADS): q; then KV_HEADS k heads; then KV_HEADS v heads
    b = bt // T
    t = bt % T
    p = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, D)
    row = qkv_ptr + bt.to(tl.int64) * (HEADS + 2 * KV_HEADS) * D + head * D
    if head < HEADS + KV_HEADS:
        cos = tl.load(cos_ptr + p * D + d).to(tl.float32)
        sin = tl.load(sin_ptr + p * D + d).to(tl.float32)
        y = _rotated(row, cos, sin, d, D)
        if head < HEADS:
            dst = q_ptr + ((b * HEADS + head) * T + t).to(tl.int64) * D + d
            tl.store(dst, y.to(q_ptr.dtype.element_ty))
        else:
            dst = k_ptr + ((b * KV_HEADS + head - HEADS).to(tl.int64) * S + p) * D + d
            tl.store(dst, y.to(k_ptr.dtype.element_ty))
    else:
        dst = v_ptr + ((b * KV_HEADS + head - HEADS - KV_HEADS).to(tl.int64) * S + p) * D + d
        tl.store(dst, tl.load(row + d).to(v_ptr.dtype.element_ty))


def rope_cache(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """qkv [B, T, (heads + 2 kv_heads) * D] -> rotated q [B, heads, T, D]; rotated k and v go
    into the caches [B, kv_heads, S, D] at positions pos [T]. cos/sin: [S, D]."""
    b, t, _ = qkv.shape
    d = k_cache.shape[-1]
    q = torch.empty(b, heads, t, d, dtype=qkv.dtype, device=qkv.device)
    _rope_cache_kernel[(b * t, heads + 2 * kv_heads)](qkv, cos, sin, pos, q, k_cache, v_cache, t, k_cache.shape[2],
                                                      HEADS=heads, KV_HEADS=kv_heads, D=d, num_warps=1,
                                                      **pdl.launch_args(qkv.device))
    return q


@triton.jit
def _rope_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, k_ptr, v_ptr, o_ptr, S, scale,
                           HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
                           PDL: tl.constexpr):
    release(PDL)
    wait(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    G: tl.constexpr = HEADS // KV_HEADS
    kvh = h // G
    dt = k_ptr.dtype.element_ty
    d = tl.arange(0, D)
    p = tl.load(pos_ptr).to(tl.int64)  # the new token's position
    cos = tl.load(cos_ptr + p * D + d).to(tl.float32)
    sin = tl.load(sin_ptr + p * D + d).to(tl.float32)
    row = qkv_ptr + b.to(tl.int64) * (HEADS + 2 * KV_HEADS) * D
    # Rounded to the model dtype where the unfused path stores them (q buffer, cache).
    q = _rotated(row + h * D, cos, sin, d, D).to(dt).to(tl.float32) * scale
    k_new = _rotated(row + (HEADS + kvh) * D, cos, sin, d, D).to(dt)
    v_new = tl.load(row + (HEADS + KV_HEADS + kvh) * D + d)
    base = (b * KV_HEADS + kvh).to(tl.int64) * S * D
    if h % G == 0:  # one program of the group writes the cache, for the steps to come
        tl.store(k_ptr + base + p * D + d, k_new)
        tl.store(v_ptr + base + p * D + d, v_new.to(dt))
    # The new key comes from registers (other programs of the group cannot see the
    # store above), the older ones 0..p-1 from the cache.
    m_i = tl.sum(q * k_new.to(tl.float32), axis=0)
    l_i = m_i * 0.0 + 1.0
    acc = v_new.to(tl.float32)
    for s0 in range(0, p, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < p
        # Both loads issued before the math: one memory round trip a block, not two.
        k = tl.load(k_ptr + base + s[:, None] * D + d[None, :], mask=smask[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_ptr + base + s[:, None] * D + d[None, :], mask=smask[:, None], other=0.0).to(tl.float32)
        scores = tl.where(smask, tl.sum(k * q[None, :], axis=1), -float("inf"))  # [BLOCK_S]
        m_new = tl.maximum(m_i, tl.max(scores, axis=0))
        pr = tl.exp(scores - m_new)
        alpha = tl.exp(m_i - m_new)
        acc = acc * alpha + tl.sum(pr[:, None] * v, axis=0)
        l_i = l_i * alpha + tl.sum(pr, axis=0)
        m_i = m_new
    tl.store(o_ptr + (b * HEADS + h).to(tl.int64) * D + d, (acc / l_i).to(o_ptr.dtype.element_ty))


def rope_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, heads: int, kv_heads: int, scale: float) -> torch.Tensor:
    """One new token a sequence: qkv [B, 1, (heads + 2 kv_heads) * D] -> attention output
    [B, 1, heads * D] over cache positions 0..pos[0]; the rotated k and v of the new token
    go into the caches [B, kv_heads, S, D] at pos[0]. cos/sin: [S, D]."""
    b = qkv.shape[0]
    d = k_cache.shape[-1]
    o = torch.empty(b, 1, heads * d, dtype=qkv.dtype, device=qkv.device)
    _rope_attention_kernel[(b, heads)](qkv, cos, sin, pos, k_cache, v_cache, o, k_cache.shape[2], scale,
                                       HEADS=heads, KV_HEADS=kv_heads, D=d, BLOCK_S=min(128, 16384 // d), num_warps=8,
                                       **pdl.launch_args(qkv.device))
    return o


@triton.jit
def _greedy_advance_kernel(logits_ptr, token_ptr, out_ptr, pos_ptr, start_ptr, scratch_ptr, B, V, stride_l, stride_o,
                           BLOCK: tl.constexpr, PDL: tl.constexpr):
    release(PDL)
    wait(PDL)
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    vals = tl.load(logits_ptr + b * stride_l + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
    m, i = tl.max(vals, axis=0, return_indices=True)
    # (value, -index) as one int64 that orders like the pair: the float's bits made
    # monotonic in [0, 2^32), times 2^31, plus 2^31 - 1 - index (the first maximum wins,
    # as in torch.argmax). Zero is below every key.
    bits = m.to(tl.int32, bitcast=True).to(tl.int64)
    key = tl.where(bits < 0, -1 - bits, bits + 2147483648)
    tl.atomic_max(scratch_ptr + b, key * 2147483648 + (2147483647 - (tl.program_id(1) * BLOCK + i)))
    ticket = tl.atomic_add(scratch_ptr + B, 1, sem="acq_rel")
    if ticket == B * tl.num_programs(1) - 1:  # the last program: every row's maximum is in
        p = tl.load(pos_ptr)
        col = p - tl.load(start_ptr)
        # The ticket's acquire orders these after every program's maximum, and the next step's
        # grid touches the scratch only once this one has ended: relaxed (no fence a row).
        for r in range(B):
            best = tl.atomic_xchg(scratch_ptr + r, 0, sem="relaxed")  # read, and leave zero for the next step
            idx = 2147483647 - best % 2147483648
            tl.store(out_ptr + r * stride_o + col, idx)
            tl.store(token_ptr + r, idx)
        tl.store(pos_ptr, p + 1)
        tl.atomic_xchg(scratch_ptr + B, 0, sem="relaxed")


def greedy_advance(logits: torch.Tensor, token: torch.Tensor, out: torch.Tensor, pos: torch.Tensor,
                   start: torch.Tensor, scratch: torch.Tensor) -> None:
    """token[b, 0] = out[b, pos - start] = argmax(logits[b]); pos += 1. logits [B, V] (rows
    contiguous), token [B, 1] and out [B, L] int64, pos and start [1] int64; scratch: int64
    [B + 1], zero, and left zero (per-row maxima and a ticket counter)."""
    b, v = logits.shape
    block = 2048
    _greedy_advance_kernel[(b, triton.cdiv(v, block))](logits, token, out, pos, start, scratch, b, v,
                                                       logits.stride(0), out.stride(0), BLOCK=block, num_warps=4,
                                                       **pdl.launch_args(logits.device))
