"""lowbit.formats.int_group: affine quantization at every granularity."""
import pytest
import torch

from lowbit.formats import (
    choose_qparams,
    dequantize,
    group_block,
    group_index,
    num_groups,
    quantize,
    quantize_affine,
)

BITS = (2, 3, 4, 8)


def _weight(n=24, k=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", [32, 48, -1])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_error_is_at_most_half_a_scale_elementwise(bits, group_size, sym):
    w = _weight()
    qw = quantize_affine(w, bits, group_block(w.shape[1], group_size), sym=sym)
    scale = qw.scale[:, qw.g_idx.long()]
    err = (qw.dequantize() - w).abs()
    assert (err <= scale / 2 * (1 + 1e-6)).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_codes_stay_in_range(bits, sym):
    qw = quantize_affine(_weight() * 100, bits, (1, 16), sym=sym)
    assert qw.q.dtype == torch.uint8
    assert int(qw.q.max()) <= 2**bits - 1
    assert int(qw.zero.min()) >= 0 and int(qw.zero.max()) <= 2**bits - 1


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_exact_zero_weight_dequantizes_to_exactly_zero(bits, sym):
    w = _weight()
    w[:, ::7] = 0.0
    qw = quantize_affine(w, bits, (1, 32), sym=sym)
    assert torch.equal(qw.dequantize()[:, ::7], torch.zeros_like(w[:, ::7]))


@pytest.mark.parametrize("bits", BITS)
def test_symmetric_zero_point_is_the_middle_code(bits):
    qw = quantize_affine(_weight(), bits, (1, 32), sym=True)
    assert torch.all(qw.zero == 2 ** (bits - 1))


def test_weights_on_the_grid_round_trip_exactly():
    scale = torch.tensor([[0.5], [0.25]])
    q = torch.randint(0, 16, (2, 40), generator=torch.Generator().manual_seed(1))
    q[:, 0], q[:, 1] = 0, 15  # pin min and max so the chosen grid is this one
    w = (q.float() - 0.0) * scale
    qw = quantize_affine(w, 4, (1, 40), sym=False, scale_dtype=None)
    assert torch.equal(qw.dequantize(), w)
    assert torch.equal(qw.q.long(), q)


def test_ragged_last_group_on_576_columns_with_group_128():
    w = _weight(8, 576)
    qw = quantize_affine(w, 4, group_block(576, 128))
    assert qw.scale.shape == (8, 5)
    assert num_groups(576, 128) == 5
    g = group_index(576, 128)
    assert torch.equal(torch.bincount(g.long()), torch.tensor([128, 128, 128, 128, 64]))
    # The ragged group's scale comes from its own 64 columns only.
    last = w[:, 512:]
    expected = last.abs().amax(dim=1) / 7.5
    assert torch.allclose(qw.scale[:, 4], expected, rtol=1e-3)


@pytest.mark.parametrize(
    "block, shape",
    [((12, 100), (1, 1)), ((1, 100), (12, 1)), ((1, 25), (12, 4)), ((1, 30), (12, 4))],
    ids=["per-tensor", "per-channel", "per-group", "ragged-group"],
)
def test_one_primitive_serves_every_granularity(block, shape):
    w = _weight(12, 100)
    qw = quantize_affine(w, 8, block)
    assert qw.scale.shape == shape
    err = (qw.dequantize() - w).abs()
    assert (err <= qw.scale.max() / 2 * (1 + 1e-6)).all()


def test_per_tensor_scale_is_absmax_over_the_whole_tensor():
    w = _weight(12, 100)
    scale, zero = choose_qparams(w, 8, (12, 100), sym=True, scale_dtype=None)
    assert scale.item() == pytest.approx(w.abs().max().item() / 127.5)
    assert zero.item() == 128


def test_all_zero_block_is_exact_and_finite():
    w = torch.zeros(4, 64)
    qw = quantize_affine(w, 4, (1, 32), sym=False)
    assert torch.isfinite(qw.scale).all()
    assert torch.equal(qw.dequantize(), w)


def test_scales_are_stored_in_fp16_without_losing_the_error_bound():
    w = _weight(16, 64) * 3.3
    qw = quantize_affine(w, 4, (1, 16), sym=True, scale_dtype=torch.float16)
    assert torch.equal(qw.scale, qw.scale.half().float())
    scale = qw.scale[:, qw.g_idx.long()]
    assert ((qw.dequantize() - w).abs() <= scale / 2).all()


def test_quantize_and_dequantize_follow_a_permuted_g_idx():
    w = _weight(6, 64)
    g_idx = group_index(64, 16)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    scale = torch.rand(6, 4) * 0.01 + 0.001
    zero = torch.full((6, 4), 8.0)
    q = quantize(w, scale, zero, 4, g_idx)
    w_hat = dequantize(q, scale, zero, g_idx)
    per_col_scale = scale[:, g_idx.long()]
    inside = (w / per_col_scale).abs() <= 7
    assert ((w_hat - w).abs()[inside] <= per_col_scale[inside] / 2 + 1e-9).all()


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_unsupported_bits_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize_affine(_weight(), bits, (1, 32))


@pytest.mark.parametrize("group_size", [0, -7])
def test_invalid_group_sizes_are_refused(group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_block(100, group_size)
