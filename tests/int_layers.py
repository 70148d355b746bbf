"""Random int-group QuantLinear layers and the reference check shared by the kernel tests."""
from __future__ import annotations

import torch

from lowbit.formats import group_block, quantize_affine
from lowbit.kernels import reference
from lowbit.nn import QuantLinear


def make_layer(n, k, bits, gs, sym, act_order=False, bias=False, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    layer = QuantLinear.from_quantized(quantize_affine(w, bits, group_block(k, gs), sym), gs,
                                       torch.randn(n, generator=g) if bias else None)
    if act_order:
        # GPTQ act-order: column perm[i] belongs to group i // gs (columns reassigned, the
        # codes stay valid: any code is a valid code for any group)
        perm = torch.randperm(k, generator=g)
        g_idx = torch.empty(k, dtype=torch.int32)
        g_idx[perm] = layer.g_idx.clone()
        layer.g_idx = g_idx
    return layer.to(device)


def ref_out(x, layer):
    return reference.int_group_linear(x.float(), layer.qweight, layer.qzeros, layer.scales, layer.g_idx,
                                      layer.bits, layer.bias)


def check(y, ref, x):
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert torch.isfinite(y).all()
    err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
    # fp16 output rounding is 5e-4 and fp16 weight slabs add a little; bf16 rounds 8x coarser
    assert err < (1.6e-2 if y.dtype == torch.bfloat16 else 4e-3), err


def repack(tk, layer, block_n):
    """The layer's weights in the Triton kernels' layout (``tk``: lowbit.kernels.triton)."""
    return tk.layout.repack_int_group(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits,
                                      layer.group_size, block_n)
