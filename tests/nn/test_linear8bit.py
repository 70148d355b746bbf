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


def _definition(layer, x, threshold, block):
    """float64 evaluation of the same arithmetic: outlier columns against dequantized weight
    columns; per (token, block) int8 codes whose products with the weight codes are exact
    integers (what int32 accumulation must give), rescaled per block."""
    w = layer.weight_int8.double() * layer.weight_scale.double()[:, None]
    cols = (x.abs() > threshold).any(0) if threshold > 0 else torch.zeros(x.shape[1], dtype=torch.bool)
    x_in = x.masked_fill(cols, 0)
    k = x.shape[1]
    block = block if 0 < block < k else k
    y = x[:, cols].double() @ w[:, cols].t()
    for s in range(0, k, block):
        xq, xs = int8.quantize_rowwise(x_in[:, s:s + block])  # one block = a row-wise quantization
        acc = xq.double() @ layer.weight_int8[:, s:s + block].double().t()
        y += acc * xs.double()[:, None] * layer.weight_scale.double()
    return y + layer.bias.double(), cols


@pytest.mark.parametrize("block", [0, 64, 48, 256, 1000])  # per token; 4 blocks; ragged 6th block; = K; > K
def test_decomposition_equals_its_definition(block):
    lin, x = _setup()
    layer = Linear8bitLt.from_linear(lin, threshold=6.0, act_block_size=block)
    expected, cols = _definition(layer, x, 6.0, block)
    assert cols.nonzero().flatten().tolist() == [5, 77, 200]
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_blocks_of_k_columns_are_the_per_token_path():
    lin, x = _setup()
    a = Linear8bitLt.from_linear(lin, act_block_size=0)(x)
    assert torch.equal(a, Linear8bitLt.from_linear(lin, act_block_size=256)(x))
    assert torch.equal(a, Linear8bitLt.from_linear(lin, act_block_size=4096)(x))


def _heavy_tailed(m=64, k=512, n=128, seed=1):
    """Inputs like a transformer's: most entries small, each token with a couple of large
    entries below the threshold (they set its per-token absmax), and three planted outlier
    features above the threshold in every token."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) * 0.05)
        lin.bias.zero_()
    x = torch.randn(m, k, generator=g) * 0.3
    spikes = torch.randint(0, k, (m, 2), generator=g)
    x.scatter_(1, spikes, (2 + 3.9 * torch.rand(m, 2, generator=g)) * torch.sign(torch.randn(m, 2, generator=g)))
    for c in (3, 130, 400):
        x[:, c] = 30 * (1 + torch.rand(m, generator=g))
    return lin, x


@pytest.mark.parametrize("threshold", [6.0, 0.0])
def test_blockwise_error_bound_is_below_the_per_token_bound(threshold):
    """Against the float64 product with the same int8 weights, the error of each output is at
    most sum_k |W8[n, k]| * scale(m, k) / 2 (each activation code within half a step): with
    per-(token, block) scales that bound is a fraction of the per-token one, and so is the
    measured error."""
    lin, x = _heavy_tailed()
    bounds, errs = {}, {}
    for block in (0, 64):
        layer = Linear8bitLt.from_linear(lin, threshold=threshold, act_block_size=block)
        exact = nn.functional.linear(x.double(), layer.dequantize(torch.float64))
        cols = int8.outlier_columns(x, threshold)
        x_in = x.masked_fill(cols, 0)
        if block:
            _, s = int8.quantize_rowwise_blocks(x_in, block)
            step = s.double().repeat_interleave(block, 1)[:, : x.shape[1]]  # [M, K]
        else:
            _, s = int8.quantize_rowwise(x_in)
            step = s.double()[:, None].expand(-1, x.shape[1])
        step = step.masked_fill(cols, 0)  # outlier columns are exact
        bound = step / 2 @ layer.dequantize(torch.float64).abs().t()  # [M, N]
        err = (layer(x).double() - exact).abs()
        assert torch.all(err <= bound * (1 + 1e-4) + 1e-5)
        bounds[block], errs[block] = bound.mean().item(), err.pow(2).mean().sqrt().item()
    assert bounds[64] < 0.6 * bounds[0]
    assert errs[64] < 0.6 * errs[0]


def test_int8_accumulation_is_exact_beyond_float32():
    """int32 sums of 8192 products of +-127: float32 could not hold them (> 2^24) exactly."""
    from lowbit.kernels.reference import _int8_matmul, _int8_matmul_blockwise

    g = torch.Generator().manual_seed(0)
    k = 8192
    a = (torch.randint(0, 2, (17, k), generator=g) * 254 - 127).to(torch.int8)
    b = (torch.randint(0, 2, (24, k), generator=g) * 254 - 127).to(torch.int8)
    b[0] = a[0]  # 127^2 * 8192 = 132,128,768 in one dot product
    exact = a.long() @ b.long().t()
    assert exact.abs().max() > 2**24
    assert torch.equal(_int8_matmul(a, b).long(), exact)
    # blockwise: each block's int32 sum times its scale (powers of two: the float32 products
    # and the float32 sum of 4 block results stay exact here)
    scale = torch.tensor([1.0, 0.5, 0.25, 2.0]).repeat(17, 1)
    ref = sum((a[:, i * 2048:(i + 1) * 2048].long() @ b[:, i * 2048:(i + 1) * 2048].long().t()).double()
              * scale[:, i:i + 1].double() for i in range(4))
    for block_diagonal in (True, False):  # one matmul of a block-diagonal expansion; one matmul per block
        assert torch.equal(_int8_matmul_blockwise(a, scale, b, 2048, block_diagonal).double(), ref)


@pytest.mark.parametrize("m, k, block", [(1, 576, 64), (5, 300, 64), (40, 256, 48)])
def test_blockwise_paths_agree(m, k, block):
    """Decode-sized inputs take the block-diagonal path, prefill-sized ones the loop: the same
    int32 block sums, so both equal the float64 definition up to float32 rounding of the
    scaled sum over blocks."""
    from lowbit.kernels.reference import _int8_matmul_blockwise

    g = torch.Generator().manual_seed(m)
    xq, s = int8.quantize_rowwise_blocks(torch.randn(m, k, generator=g), block)
    w = torch.randint(-127, 128, (72, k), generator=g, dtype=torch.int64).to(torch.int8)
    ref = sum((xq[:, i:i + block].double() @ w[:, i:i + block].double().t()) * s[:, j:j + 1].double()
              for j, i in enumerate(range(0, k, block)))
    tol = 1e-6 * ref.abs().max().item()  # float32 epsilon times a few terms
    for block_diagonal in (True, False):
        y = _int8_matmul_blockwise(xq, s, w, block, block_diagonal)
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_outlier_path_against_a_16bit_matmul(dtype):
    """Against x @ W8.T with the same int8 weights W8 (float64): what is left is activation
    quantization. Errors are relative to the output of the non-outlier features."""
    lin, x = _setup()
    dec = Linear8bitLt.from_linear(lin, threshold=6.0, compute_dtype=dtype, act_block_size=0)
    no_dec = Linear8bitLt.from_linear(lin, threshold=0.0, compute_dtype=dtype, act_block_size=0)
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


@pytest.mark.parametrize("block", [0, 64])
def test_threshold_zero_is_pure_int8_and_no_outliers_same_as_decomposed(block):
    lin, x = _setup(outlier_cols=())
    a = Linear8bitLt.from_linear(lin, threshold=0.0, act_block_size=block)(x)
    b = Linear8bitLt.from_linear(lin, threshold=6.0, act_block_size=block)(x)
    assert torch.equal(a, b)  # no column above 6: the decomposition is a no-op
    lin, x = _setup()
    expected, cols = _definition(Linear8bitLt.from_linear(lin, threshold=0.0, act_block_size=block), x, 0.0, block)
    assert not cols.any()  # threshold 0: the outlier columns go through int8 too
    torch.testing.assert_close(Linear8bitLt.from_linear(lin, threshold=0.0, act_block_size=block)(x).double(),
                               expected, rtol=1e-5, atol=1e-5)


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
    with pytest.raises(ValueError, match="act_block_size"):
        Linear8bitLt.from_linear(lin, act_block_size=-64)


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
