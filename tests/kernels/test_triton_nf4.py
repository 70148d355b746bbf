"""Triton kernels on Linear4bit (NF4 / FP4 code books) vs kernels/reference.py."""
from __future__ import annotations

import pytest
import torch

from lowbit.formats import nf4
from lowbit.kernels import reference
from lowbit.nn import Linear4bit


def make_layer(n, k, quant_type="nf4", blocksize=64, double_quant=True, bias=False, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g))
    return Linear4bit.from_linear(lin, quant_type, blocksize, double_quant).to(device)


def ref_out(x, layer):
    return reference.nf4_linear(x.float(), layer.weight_4bit, layer.absmax_float(), layer.quant_type,
                                layer.blocksize, torch.float32, layer.bias)


def check(y, ref):
    assert torch.isfinite(y).all()
    err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
    assert err < 4e-3, err


def repack(tk, layer, block_n=16):
    return tk.layout.repack_nf4(layer.weight_4bit, layer.absmax_float(), layer.code, layer.out_features,
                                layer.in_features, layer.blocksize, block_n)


def test_repack_nf4_codes(tk):
    layer = make_layer(12, 512)
    pw = repack(tk, layer)
    words = pw.qweight.permute(1, 2, 0, 3).reshape(pw.chunks, tk.layout.PK, -1)
    codes = torch.stack([(words >> (4 * j)) & 15 for j in range(8)], dim=1).reshape(-1, words.shape[-1])[:512, :12]
    assert torch.equal(codes.t().to(torch.uint8), nf4.unpack_nibbles(layer.weight_4bit, 12 * 512).view(12, 512))
    assert torch.equal(pw.scales, layer.absmax_float().view(12, 8).t())


def test_repack_nf4_refuses_straddling_blocks(tk):
    layer = make_layer(4, 96, blocksize=64)  # 96 % 64: blocks straddle rows
    with pytest.raises(tk.layout.Unsupported, match="straddle"):
        repack(tk, layer)


@pytest.mark.parametrize("quant_type,double_quant,m,lut_reg", [("nf4", True, 1, False), ("fp4", False, 2, False),
                                                                ("nf4", True, 1, True)])
def test_gemv_nf4(tk, quant_type, double_quant, m, lut_reg):
    layer = make_layer(40, 512, quant_type, double_quant=double_quant, bias=m == 1, device=tk.device)
    x = torch.randn(m, 512, device=tk.device).half()
    y = tk.launch.gemv(x, repack(tk, layer, 32), layer.bias, tk.launch.GemvConfig(split=2, lut_reg=lut_reg))
    check(y, ref_out(x, layer))


@pytest.mark.parametrize("m", [17, 64])
def test_gemm_nf4(tk, m):
    layer = make_layer(48, 512, blocksize=128, bias=True, device=tk.device)
    x = torch.randn(m, 512, device=tk.device).half()
    y = tk.launch.gemm(x, repack(tk, layer), layer.bias, tk.launch.GemmConfig(bm=16, bnt=32))
    check(y, ref_out(x, layer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the dispatch path)")
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gpu_dispatch_nf4(tk, quant_type):
    from lowbit.kernels import KERNELS

    for n, k, dtype in [(96, 1024, torch.float16), (4096 + 64, 768, torch.bfloat16), (200, 4096, torch.float16)]:
        layer = make_layer(n, k, quant_type, bias=n == 200, seed=n, device="cuda")
        for m in (1, 3, 16, 17, 64, 257):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            y = layer(x)
            assert tk.linear.nf4 in KERNELS["nf4"] and layer.__dict__["_lowbit_triton"].packed is not None
            ref = ref_out(x, layer)
            err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
            assert err < (2e-2 if dtype == torch.bfloat16 else 4e-3), (n, k, m, err)
