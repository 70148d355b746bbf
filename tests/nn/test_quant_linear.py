"""QuantLinear: packed storage, reference kernel, skeleton loading."""
import pytest
import torch
import torch.nn.functional as F

from lowbit.formats import group_block, group_index, quantize, choose_qparams, AffineQuantized, quantize_affine
from lowbit.nn import QuantLinear


def _quantized(n, k, bits, group_size, sym=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.1
    return w, quantize_affine(w, bits, group_block(k, group_size), sym=sym)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n, k, group_size", [(64, 96, 32), (40, 100, 48), (96, 576, 128), (33, 64, -1)])
def test_forward_equals_matmul_with_the_dequantized_weight(bits, n, k, group_size):
    w, qw = _quantized(n, k, bits, group_size, sym=bits != 3)
    bias = torch.randn(n)
    layer = QuantLinear.from_quantized(qw, group_size, bias)
    x = torch.randn(2, 5, k)
    expected = F.linear(x, qw.dequantize(), bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.dequantize(), qw.dequantize(), rtol=0, atol=0)


def test_act_order_g_idx_survives_packing():
    n, k, gs = 32, 64, 16
    w = torch.randn(n, k)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(3))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = group_index(k, gs)  # groups assigned in permuted column order
    scale, zero = choose_qparams(w[:, perm], 4, (1, gs), sym=False)
    q = quantize(w, scale, zero, 4, g_idx)
    qw = AffineQuantized(q, scale, zero, g_idx, 4, (1, gs), False)
    layer = QuantLinear.from_quantized(qw, gs)
    assert torch.equal(layer.g_idx, g_idx)
    torch.testing.assert_close(layer.dequantize(), qw.dequantize(), rtol=0, atol=0)


def test_buffers_have_the_gptq_layout():
    _, qw = _quantized(64, 96, 4, 32)
    layer = QuantLinear.from_quantized(qw, 32)
    assert layer.qweight.shape == (96 // 8, 64) and layer.qweight.dtype == torch.int32
    assert layer.qzeros.shape == (3, 64 // 8) and layer.qzeros.dtype == torch.int32
    assert layer.scales.shape == (3, 64) and layer.scales.dtype == torch.float16
    assert layer.g_idx.shape == (96,)
    # symmetric 4-bit zeros are all 8: every zero word is 0x88888888
    assert torch.all(layer.qzeros == torch.tensor(0x88888888 - 2**32, dtype=torch.int32))


def test_empty_skeleton_loads_state_dict_by_assignment():
    _, qw = _quantized(48, 80, 4, 32)
    layer = QuantLinear.from_quantized(qw, 32, torch.randn(48))
    skeleton = QuantLinear.empty(80, 48, 4, 32, bias=True)
    assert skeleton.qweight.device.type == "meta"
    skeleton.load_state_dict(layer.state_dict(), assign=True)
    x = torch.randn(3, 80)
    assert torch.equal(skeleton(x), layer(x))


def test_reference_kernel_is_forced_by_environment(monkeypatch):
    from lowbit import kernels

    calls = []
    monkeypatch.setitem(kernels.KERNELS, "int_group", [lambda x, layer: calls.append(1) or x.new_zeros(1)])
    _, qw = _quantized(16, 32, 4, 32)
    layer = QuantLinear.from_quantized(qw, 32)
    monkeypatch.setenv("LOWBIT_KERNEL", "reference")
    y = layer(torch.randn(2, 32))
    assert y.shape == (2, 16) and not calls
