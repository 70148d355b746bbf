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
