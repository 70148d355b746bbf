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


def test_rope_cache_and_decode_attention(tk):
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
    last = pos[-1:]
    o = tk.fused.decode_attention(q[:, :, -1:].contiguous(), kc, vc, last, 0.17)
    keys = kc[:, :, :73].float().repeat_interleave(heads // kv, 1)
    vals = vc[:, :, :73].float().repeat_interleave(heads // kv, 1)
    p = torch.softmax(q[:, :, -1:].float() @ keys.transpose(-1, -2) * 0.17, dim=-1)
    torch.testing.assert_close(o.float(), (p @ vals).transpose(1, 2).reshape(1, 1, -1), rtol=2e-3, atol=2e-3)
