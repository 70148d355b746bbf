"""Row-wise int8 (LLM.int8 weights and activations)."""
import torch

from lowbit.formats import int8


def test_rowwise_round_trip_error_bound_and_range():
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    x[3] = 0  # an all-zero row
    q, scale = int8.quantize_rowwise(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (64,)
    assert q.abs().max() == 127 and q.min() >= -127
    assert scale[3] == 0 and not q[3].any()
    torch.testing.assert_close(scale, x.abs().amax(1) / 127)
    err = (int8.dequantize_rowwise(q, scale) - x).abs()
    assert torch.all(err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7)
    # the largest element of each row is exact up to float rounding
    idx = x.abs().argmax(1)
    torch.testing.assert_close(int8.dequantize_rowwise(q, scale).gather(1, idx[:, None]), x.gather(1, idx[:, None]))


def test_outlier_columns():
    x = torch.zeros(4, 10)
    x[2, 7] = -6.5
    x[1, 3] = 6.0  # not above the threshold
    assert int8.outlier_columns(x, 6.0).nonzero().flatten().tolist() == [7]
    assert not int8.outlier_columns(x, 0.0).any()


def test_rowwise_blocks_round_trip_ragged_and_zero_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 300, generator=g) * torch.linspace(0.01, 10, 300)  # magnitudes vary along K
    x[2, 64:128] = 0  # an all-zero block
    q, scale = int8.quantize_rowwise_blocks(x, 64)  # 4 full blocks and a ragged one of 44
    assert q.shape == (16, 300) and q.dtype == torch.int8 and scale.shape == (16, 5) and scale.dtype == torch.float32
    assert q.min() >= -127 and q.max() <= 127
    expected = torch.stack([x[:, s:s + 64].abs().amax(1) for s in range(0, 300, 64)], 1) / 127
    torch.testing.assert_close(scale, expected)
    assert scale[2, 1] == 0 and not q[2, 64:128].any()
    step = scale.repeat_interleave(64, 1)[:, :300]
    err = (int8.dequantize_rowwise_blocks(q, scale, 64) - x).abs()
    assert torch.all(err <= step / 2 * (1 + 1e-5) + 1e-7)
    # each block is the row-wise quantization of its columns; one block spanning K is row-wise
    for b, s in enumerate(range(0, 300, 64)):
        qb, sb = int8.quantize_rowwise(x[:, s:s + 64])
        assert torch.equal(q[:, s:s + 64], qb) and torch.equal(scale[:, b], sb)
    q1, s1 = int8.quantize_rowwise_blocks(x, 300)
    q0, s0 = int8.quantize_rowwise(x)
    assert torch.equal(q1, q0) and torch.equal(s1[:, 0], s0)
    # finer scales: smaller error than one scale per row on the same input
    row_err = (int8.dequantize_rowwise(q0, s0) - x).pow(2).mean()
    assert err.pow(2).mean() < 0.6 * row_err  # 0.36 for this ramp of magnitudes
