"""Random NF4/FP4 Linear4bit layers and the reference check shared by the kernel tests."""
from __future__ import annotations

import torch

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
    assert err < (2e-2 if y.dtype == torch.bfloat16 else 4e-3), err  # bf16 output: 8-bit mantissa


def repack(tk, layer, block_n=16):
    return tk.layout.repack_nf4(layer.weight_4bit, layer.absmax_float(), layer.code, layer.out_features,
                                layer.in_features, layer.blocksize, block_n)
