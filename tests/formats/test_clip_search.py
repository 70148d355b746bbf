"""choose_qparams_clipped: a clipping ratio per block, searched on the weight error."""
import pytest
import torch

from lowbit.formats import choose_qparams, choose_qparams_clipped, dequantize, group_index, quantize


def _err(w, scale, zero, bits, gs, norm=2.4, col_weight=None):
    g = group_index(w.shape[1], gs)
    e = (dequantize(quantize(w, scale, zero, bits, g), scale, zero, g) - w).abs().pow(norm)
    if col_weight is not None:
        e = e * col_weight
    return e.reshape(w.shape[0], -1).sum(1)  # per row (one group per row below)


@pytest.mark.parametrize("bits,sym", [(3, True), (4, False), (4, True), (8, False)])
def test_never_worse_than_min_max_in_any_block(bits, sym):
    torch.manual_seed(0)
    w = torch.randn(64, 32) * torch.rand(64, 1)
    w[::5, 3] *= 8  # a large weight per block: where clipping pays
    s0, z0 = choose_qparams(w, bits, (1, 32), sym)
    s1, z1 = choose_qparams_clipped(w, bits, (1, 32), sym)
    assert torch.all(_err(w, s1, z1, bits, 32) <= _err(w, s0, z0, bits, 32) * (1 + 1e-6))


def test_clips_blocks_with_an_outlier_and_lowers_the_total_error():
    torch.manual_seed(1)
    w = torch.randn(256, 64)
    w[:, 0] = 6.0  # every block: one weight far beyond the rest
    s0, z0 = choose_qparams(w, 4, (1, 64), sym=False)
    s1, z1 = choose_qparams_clipped(w, 4, (1, 64), sym=False)
    assert (s1 < s0).float().mean() > 0.5
    assert _err(w, s1, z1, 4, 64).sum() < 0.95 * _err(w, s0, z0, 4, 64).sum()


def test_keeps_exact_grid_weights_unclipped():
    # Weights already on a 4-bit grid are exact at full range: nothing to gain by clipping.
    torch.manual_seed(2)
    w = (torch.randint(0, 16, (32, 64)).float() - 7) * 0.125
    w[:, 0], w[:, 1] = -7 * 0.125, 8 * 0.125
    s, z = choose_qparams_clipped(w, 4, (1, 64), sym=False, scale_dtype=None)
    g = group_index(64, 64)
    assert torch.equal(dequantize(quantize(w, s, z, 4, g), s, z, g), w)


def test_ragged_last_group_and_column_weights():
    torch.manual_seed(3)
    w = torch.randn(16, 576)
    cw = torch.rand(576)
    s, z = choose_qparams_clipped(w, 4, (1, 128), sym=True, col_weight=cw)
    assert s.shape == z.shape == (16, 5)
    s0, z0 = choose_qparams(w, 4, (1, 128), sym=True)
    g = group_index(576, 128)

    def werr(scale, zero):
        return ((dequantize(quantize(w, scale, zero, 4, g), scale, zero, g) - w).abs().pow(2.4) * cw).sum()

    assert werr(s, z) <= werr(s0, z0)
