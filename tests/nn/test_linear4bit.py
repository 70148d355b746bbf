"""Linear4bit: layout, forward through the reference kernel, skeleton loading."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.formats import nf4
from lowbit.nn import Linear4bit


def _linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    lin.weight.data.normal_(0, 0.05)
    return lin


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_buffers_and_dequantize_match_the_format(quant_type, double_quant):
    lin = _linear(192, 72)
    layer = Linear4bit.from_linear(lin, quant_type, 64, double_quant)
    nb = 192 * 72 // 64
    assert layer.weight_4bit.shape == (72, 96) and layer.weight_4bit.dtype == torch.uint8
    assert layer.absmax.shape == (nb,)
    assert layer.absmax.dtype == (torch.uint8 if double_quant else torch.float32)
    if double_quant:
        assert layer.nested_absmax.shape == (1,) and layer.nested_offset.shape == ()
    q = nf4.quantize_4bit(lin.weight.data, quant_type, 64, double_quant)
    assert torch.equal(layer.weight_4bit.reshape(-1), q.packed)
    assert torch.equal(layer.dequantize(torch.float32), q.dequantize())
    # the row/column reading of the layout documented in the module docstring
    codes = torch.stack([layer.weight_4bit >> 4, layer.weight_4bit & 0xF], dim=-1).reshape(72, 192)
    a = layer.absmax_float().view(72, 192 // 64).repeat_interleave(64, dim=1)
    assert torch.equal(layer.code[codes.long()] * a, layer.dequantize(torch.float32))


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_forward_equals_linear_with_dequantized_weight(compute_dtype):
    lin = _linear(128, 48)
    layer = Linear4bit.from_linear(lin, "nf4", compute_dtype=compute_dtype)
    x = torch.randn(2, 3, 128)
    y = layer(x)
    assert y.dtype == x.dtype and y.shape == (2, 3, 48)
    expected = F.linear(x.to(compute_dtype), layer.dequantize(compute_dtype), lin.bias.to(compute_dtype)).float()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    rel = (y - lin(x)).norm() / lin(x).norm()
    assert rel < 0.15


def test_gradient_flows_to_the_input_not_the_buffers():
    layer = Linear4bit.from_linear(_linear(64, 32), "nf4")
    x = torch.randn(4, 64, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dequantize(torch.float32).sum(0).expand(4, 64))
    assert not any(p.requires_grad for p in layer.parameters())


def test_empty_skeleton_loads_state_dict():
    src = Linear4bit.from_linear(_linear(128, 64), "fp4", double_quant=True)
    dst = Linear4bit.empty(128, 64, True, "fp4", 64, True)
    assert dst.weight_4bit.device.type == "meta"
    dst.load_state_dict(src.state_dict(), assign=True)
    x = torch.randn(5, 128)
    assert torch.equal(dst(x), src(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="even in_features"):
        Linear4bit.from_linear(nn.Linear(7, 4))
    with pytest.raises(ValueError, match="unknown 4-bit quant type"):
        Linear4bit.from_linear(nn.Linear(8, 4), "int4")


def test_half_keeps_the_quantization_state_exact():
    lin = _linear(128, 64)
    layer = Linear4bit.from_linear(lin, "nf4", double_quant=True, compute_dtype=torch.float16)
    plain = Linear4bit.from_linear(lin, "nf4", double_quant=False, compute_dtype=torch.float16)
    w, w_plain = layer.dequantize(torch.float32), plain.dequantize(torch.float32)
    layer.half()
    plain.to(torch.bfloat16)
    assert layer.nested_absmax.dtype == layer.nested_offset.dtype == plain.absmax.dtype == torch.float32
    assert layer.bias.dtype == torch.float16 and plain.bias.dtype == torch.bfloat16
    assert torch.equal(layer.dequantize(torch.float32), w)
    assert torch.equal(plain.dequantize(torch.float32), w_plain)
