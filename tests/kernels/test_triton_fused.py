"""Fused decode-step kernels vs plain torch (interpreted on CPU, compiled on CUDA)."""
from __future__ import annotations

import torch


def _rmsnorm(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_add_rmsnorm_and_silu_mul(tk):
    dt = torch.float16 if tk.gpu else torch.float32
    x, res = (torch.randn(3, 96 if not tk.gpu else 4096, device=tk.device, dtype=dt) for _ in range(2))
    w = torch.randn(x.shape[1], device=tk.device, dtype=dt)
    want_res = (res.float() + x.float()).to(dt)
    out = tk.fused.add_rmsnorm(x, res, w, 1e-5)
    torch.testing.assert_close(res, want_res)
    torch.testing.assert_close(out, _rmsnorm(want_res, w, 1e-5), rtol=2e-3, atol=2e-3)
    gu = torch.randn(3, 2 * 80, device=tk.device, dtype=dt)
    g, u = gu.float().chunk(2, dim=-1)
    torch.testing.assert_close(tk.fused.silu_mul(gu).float(), torch.nn.functional.silu(g) * u, rtol=2e-3, atol=2e-3)


def test_silu_mul_interleaved_matches_reference_silu_pairs(tk):
    from lowbit.kernels import reference

    dt = torch.float16 if tk.gpu else torch.float32
    gu = torch.randn(5, 2 * 1100, device=tk.device, dtype=dt) * 4  # more than one 1024-column block
    # Same float32 formula, rounded once; exp may differ in the last bit (fp16: one rounding step)
    tol = 1e-3 if dt == torch.float16 else 1e-5
    torch.testing.assert_close(tk.fused.silu_mul(gu, interleaved=True), reference.silu_pairs(gu), rtol=tol, atol=tol)


def _attention(q, kc, vc, n, scale):
    """Plain torch: q [B, heads, 1, D] over cache positions 0..n-1 (grouped KV heads) -> [B, 1, heads * D]."""
    g = q.shape[1] // kc.shape[1]
    keys, vals = (c[:, :, :n].float().repeat_interleave(g, 1) for c in (kc, vc))
    p = torch.softmax(q.float() @ keys.transpose(-1, -2) * scale, dim=-1)
    return (p @ vals).transpose(1, 2).reshape(q.shape[0], 1, -1)


def test_rope_cache_and_rope_attention(tk):
    dt = torch.float16 if tk.gpu else torch.float32
    heads, kv, d, s, t = 4, 2, 32, 100, 3
    qkv = torch.randn(1, t, (heads + 2 * kv) * d, device=tk.device, dtype=dt)
    ang = torch.rand(s, d // 2, device=tk.device) * 3
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dt), torch.cat([ang.sin()] * 2, -1).to(dt)
    kc, vc = (torch.randn(1, kv, s, d, device=tk.device, dtype=dt) for _ in range(2))
    kc0 = kc.clone()
    pos = torch.tensor([70, 71, 72], device=tk.device)
    q = tk.fused.rope_cache(qkv, cos, sin, pos, kc, vc, heads, kv)
    qh = qkv.view(1, t, heads + 2 * kv, d).transpose(1, 2).float()
    c, sn = cos[pos].float(), sin[pos].float()
    torch.testing.assert_close(q.float(), qh[:, :heads] * c + _rotate_half(qh[:, :heads]) * sn, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(kc[:, :, pos].float(), qh[:, heads:heads + kv] * c + _rotate_half(qh[:, heads:heads + kv]) * sn,
                               rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(vc[:, :, pos], qh[:, heads + kv:].to(dt))
    assert torch.equal(kc[:, :, :70], kc0[:, :, :70])  # nothing else written
    # the last token again through the one-launch path: it rewrites its own cache entries
    # (same values) and attends over positions 0..72
    o = tk.fused.rope_attention(qkv[:, -1:], cos, sin, pos[-1:], kc, vc, heads, kv, 0.17)
    torch.testing.assert_close(o.float(), _attention(q[:, :, -1:], kc, vc, 73, 0.17), rtol=2e-3, atol=2e-3)


def test_rope_attention_matches_rope_cache_then_attention(tk):
    """The one-launch decode attention (T = 1) writes the same cache entries as rope_cache,
    and returns attention over them, for every head of each group."""
    dt = torch.float16 if tk.gpu else torch.float32
    heads, kv, d, s, b = 8, 2, 32, 150, 2
    qkv = torch.randn(b, 1, (heads + 2 * kv) * d, device=tk.device, dtype=dt)
    ang = torch.rand(s, d // 2, device=tk.device) * 3
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dt), torch.cat([ang.sin()] * 2, -1).to(dt)
    kc, vc = (torch.randn(b, kv, s, d, device=tk.device, dtype=dt) for _ in range(2))
    pos = torch.tensor([129], device=tk.device)  # 129 older keys: a full block of 128 and one more
    kc2, vc2 = kc.clone(), vc.clone()
    q = tk.fused.rope_cache(qkv, cos, sin, pos, kc, vc, heads, kv)
    want = _attention(q, kc, vc, 130, 0.2)
    got = tk.fused.rope_attention(qkv, cos, sin, pos, kc2, vc2, heads, kv, 0.2)
    assert torch.equal(kc2, kc) and torch.equal(vc2, vc)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


def test_rope_attention_at_position_zero_is_the_new_value(tk):
    """With no older keys the softmax has one entry: the output is the new token's v."""
    heads, kv, d = 4, 4, 16
    qkv = torch.randn(1, 1, (heads + 2 * kv) * d, device=tk.device)
    ones, zeros = torch.ones(8, d, device=tk.device), torch.zeros(8, d, device=tk.device)
    kc, vc = (torch.zeros(1, kv, 8, d, device=tk.device) for _ in range(2))
    o = tk.fused.rope_attention(qkv, ones, zeros, torch.tensor([0], device=tk.device), kc, vc, heads, kv, 1.0)
    torch.testing.assert_close(o.view(heads, d), qkv.view(-1, d)[heads + kv:])


def test_greedy_advance_is_argmax_and_moves_the_position(tk):
    v = 9000  # three blocks of the kernel, the last one ragged
    logits = torch.randn(2, v, device=tk.device)
    logits[0, 7000] = logits[0, 8999] = 50.0  # a tie across blocks: the first index wins
    logits[1, 4096] = 40.0
    token = torch.zeros(2, 1, dtype=torch.long, device=tk.device)
    out = torch.zeros(2, 10, dtype=torch.long, device=tk.device)
    pos, start = torch.tensor([13], device=tk.device), torch.tensor([10], device=tk.device)
    scratch = torch.zeros(3, dtype=torch.long, device=tk.device)
    tk.fused.greedy_advance(logits.half() if tk.gpu else logits, token, out, pos, start, scratch)
    assert token[:, 0].tolist() == [7000, 4096] == logits.argmax(-1).tolist()
    assert out[:, 3].tolist() == [7000, 4096] and int(out.sum()) == 7000 + 4096
    assert pos.item() == 14 and not scratch.any()  # left zero for the next step
    logits = -torch.rand(2, v, device=tk.device) - 1.0  # all negative: the key order of negative floats
    tk.fused.greedy_advance(logits, token, out, pos, start, scratch)
    assert token[:, 0].tolist() == logits.argmax(-1).tolist() and out[:, 4].tolist() == token[:, 0].tolist()
    assert pos.item() == 15
