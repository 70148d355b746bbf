"""Linear8bitLt: the LLM.int8 outlier decomposition against 16-bit matmuls."""
import pytest
import torch
from torch import nn

from lowbit.formats import int8
from lowbit.nn import Linear8bitLt


def _setup(m=32, k=256, n=96, outlier_cols=(5, 77, 200), magnitude=40.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    x = torch.randn(m, k, generator=g)
    for c in outlier_cols:  # systematic outlier features, as LLM.int8 observes in large models
        x[:, c] = magnitude * (1 + torch.rand(m, generator=g))
    return lin, x


def test_decomposition_equals_its_definition():
    lin, x = _setup()
    layer = Linear8bitLt.from_linear(lin, threshold=6.0)
    y = layer(x)
    # independent float64 evaluation of the same arithmetic
    w = layer.weight_int8.double() * layer.weight_scale.double()[:, None]
    cols = (x.abs() > 6.0).any(0)
    assert cols.nonzero().flatten().tolist() == [5, 77, 200]
    x_in = x.masked_fill(cols, 0)
    xq, xs = int8.quantize_rowwise(x_in)
    acc = xq.double() @ layer.weight_int8.double().t()  # what int32 accumulation must give exactly
    expected = x[:, cols].double() @ w[:, cols].t() + acc * xs.double()[:, None] * layer.weight_scale.double()
    expected += lin.bias.double()
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_outlier_path_against_a_16bit_matmul(dtype):
    """Against x @ W8.T with the same int8 weights W8 (float64): what is left is activation
    quantization. Errors are relative to the output of the non-outlier features."""
    lin, x = _setup()
    dec = Linear8bitLt.from_linear(lin, threshold=6.0, compute_dtype=dtype)
    no_dec = Linear8bitLt.from_linear(lin, threshold=0.0, compute_dtype=dtype)
    exact = nn.functional.linear(x.double(), dec.dequantize(torch.float64), lin.bias.double())
    matmul16 = nn.functional.linear(x.to(dtype), dec.dequantize(dtype), lin.bias.to(dtype))
    regular = (lin(x.masked_fill((x.abs() > 6).any(0), 0)) - lin.bias).double().norm()

    def err(y):
        assert y.dtype == dtype
        return ((y.double() - exact).norm() / regular).item()

    e16, e_dec, e_int8 = err(matmul16), err(dec(x.to(dtype))), err(no_dec(x.to(dtype)))
    assert e_dec < e16 + 0.01  # outliers exact in 16 bit, the rest at int8 precision
    assert e_int8 > 0.1  # without decomposition the outliers set every token's scale
    assert e_int8 > 5 * e_dec


def test_threshold_zero_is_pure_int8_and_no_outliers_same_as_decomposed():
    lin, x = _setup(outlier_cols=())
    a = Linear8bitLt.from_linear(lin, threshold=0.0)(x)
    b = Linear8bitLt.from_linear(lin, threshold=6.0)(x)
    assert torch.equal(a, b)  # no column above 6: the decomposition is a no-op


def test_shapes_dtypes_skeleton_and_bad_threshold():
    lin, x = _setup()
    src = Linear8bitLt.from_linear(lin)
    assert src.weight_int8.shape == (96, 256) and src.weight_int8.dtype == torch.int8
    assert src.weight_scale.shape == (96,) and src.weight_scale.dtype == torch.float32
    dst = Linear8bitLt.empty(256, 96, True)
    dst.load_state_dict(src.state_dict(), assign=True)
    y = dst(x.reshape(4, 8, 256))
    assert y.shape == (4, 8, 96)
    assert torch.equal(y.reshape(32, 96), src(x))
    with pytest.raises(ValueError, match="threshold"):
        Linear8bitLt.from_linear(lin, threshold=-1)


def test_half_keeps_the_scales_float32():
    lin, x = _setup()
    layer = Linear8bitLt.from_linear(lin, compute_dtype=torch.float16)
    scale = layer.weight_scale.clone()
    layer.half()
    assert torch.equal(layer.weight_scale, scale) and layer.bias.dtype == torch.float16


def test_int8_matmul_padding_path_is_exact():
    from lowbit.kernels.reference import _int8_matmul

    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (3, 70), generator=g, dtype=torch.int64).to(torch.int8)
    b = torch.randint(-127, 128, (5, 70), generator=g, dtype=torch.int64).to(torch.int8)
    assert torch.equal(_int8_matmul(a, b), (a.long() @ b.long().t()).int())
