"""GPTQ: agreement with a direct (unbatched OBS) solve, never worse than RTN on the
calibration inputs, act-order g_idx, damping, statistics."""
import logging
import math

import pytest
import torch

from lowbit.algorithms.gptq import HessianStats, gptq, gptq_quantize, lazy_blocksize
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.formats import choose_qparams, group_block, quantize_affine
from lowbit.nn import QuantLinear


# tiny tensors: see the one_thread fixture (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def layer(n=24, k=80, tokens=600, seed=0):
    """A weight W [n, k] and correlated inputs X [tokens, k] with a few large channels."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, k, generator=g)
    mix = torch.randn(k, k, generator=g) / math.sqrt(k) + torch.eye(k)
    X = torch.randn(tokens, k, generator=g) @ mix
    X[:, :: 7] *= 4  # outlier channels, as in LLM activations
    return W, X


def hessian(X):
    return 2 * X.t() @ X / X.shape[0]


def output_error(X, W, Q):
    return (X @ (W - Q).t()).pow(2).sum().item()


def direct_gptq(W, H, bits, gs, sym, damp_percent=0.01):
    """OBS column by column with an explicit inverse, float64, no lazy batches, no Cholesky:
    quantize column i, spread its error with row i of H^-1, eliminate i from H^-1."""
    W = W.double().clone()
    K = W.shape[1]
    H = H.double() + damp_percent * torch.diag(H).double().mean() * torch.eye(K, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for i in range(K):
        if i % gs == 0:
            scale, zero = choose_qparams(W[:, i:i + gs].float(), bits, (1, min(gs, K - i)), sym)
            s, z = scale[:, 0].double(), zero[:, 0].double()
        q = torch.clamp(torch.round(W[:, i] / s) + z, 0, 2**bits - 1)
        Q[:, i] = s * (q - z)
        err = (W[:, i] - Q[:, i]) / Hinv[i, i]
        W[:, i:] -= err[:, None] * Hinv[i, i:][None, :]
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return Q.float()


@pytest.mark.parametrize("bits,gs,sym", [(4, 16, True), (3, 20, False), (2, -1, True)])
def test_matches_direct_solve(bits, gs, sym):
    W, X = layer(k=90)  # a ragged last group for both group sizes
    H = hessian(X)
    qw, loss = gptq(W, H, bits, gs, sym, blocksize=32)  # several lazy blocks
    ref = direct_gptq(W, H, bits, gs if gs != -1 else W.shape[1], sym)
    Q = qw.dequantize()
    same = (Q == ref).float().mean().item()
    assert same > 0.995, f"only {same:.4f} of the weights agree with the direct solve"
    assert output_error(X, W, Q) == pytest.approx(output_error(X, W, ref), rel=2e-3)
    assert loss > 0


def test_ragged_last_group_and_lazy_blocks():
    W, X = layer(k=90)
    H = hessian(X)
    qw, _ = gptq(W, H, 4, 32, True, blocksize=16)  # groups 32, 32, 26; blocks of 32
    assert qw.scale.shape == (W.shape[0], 3)
    assert torch.equal(qw.g_idx, (torch.arange(90) // 32).int())
    ref = direct_gptq(W, H, 4, 32, True)
    assert (qw.dequantize() == ref).float().mean() > 0.995


@pytest.mark.parametrize("bits,gs,sym,act", [
    (2, 16, True, False), (3, -1, False, False), (3, 24, True, True), (4, 16, False, True),
    (4, 16, True, False), (4, -1, True, True), (8, 16, True, False), (8, 24, False, True),
])
def test_never_worse_than_rtn_on_calibration_inputs(bits, gs, sym, act):
    for seed in range(2):
        W, X = layer(seed=seed)
        cfg = QuantConfig(method="gptq", bits=bits, group_size=gs, sym=sym, act_order=act)
        stats = HessianStats.zeros(W.shape[1])
        for chunk in X.split(128):
            stats.add(chunk)
        res = gptq_quantize(W, stats, cfg)
        rtn = quantize_affine(W, bits, group_block(W.shape[1], gs), sym)
        e_gptq, e_rtn = output_error(X, W, res.weight.dequantize()), output_error(X, W, rtn.dequantize())
        assert e_gptq <= e_rtn, f"seed {seed}: GPTQ {e_gptq:.4g} > RTN {e_rtn:.4g}"
        if bits in (3, 4):  # and clearly better where rounding errors are moderate
            assert e_gptq < 0.9 * e_rtn


@pytest.mark.parametrize("gs", [16, 20])
def test_act_order_g_idx(gs):
    W, X = layer()
    H = hessian(X)
    qw, _ = gptq(W, H, 4, gs, True, act_order=True)
    perm = torch.argsort(torch.diag(H), descending=True)
    # group g is the g-th run of gs columns in order of decreasing diag(H)
    assert torch.equal(qw.g_idx[perm].long(), torch.arange(W.shape[1]) // gs)
    counts = torch.bincount(qw.g_idx.long())
    assert counts[:-1].eq(gs).all() and 0 < counts[-1] <= gs
    assert not torch.equal(qw.g_idx, torch.sort(qw.g_idx).values)  # really permuted here
    # the packed layer dequantizes to exactly the same weight through g_idx
    ql = QuantLinear.from_quantized(qw, gs)
    assert torch.equal(ql.dequantize(), qw.dequantize())
    x = X[:5]
    assert torch.allclose(ql(x), x @ qw.dequantize().t(), atol=1e-4)


def test_static_groups_keep_sequential_g_idx():
    W, X = layer()
    H = hessian(X)
    qw, _ = gptq(W, H, 4, 16, True, act_order=True, static_groups=True)
    assert torch.equal(qw.g_idx, (torch.arange(W.shape[1]) // 16).int())
    # parameters are those of the original weight's groups
    scale, zero = choose_qparams(W, 4, (1, 16), True)
    assert torch.equal(qw.scale, scale) and torch.equal(qw.zero, zero)
    assert output_error(X, W, qw.dequantize()) < output_error(X, W, quantize_affine(W, 4, (1, 16)).dequantize())


def test_damping_raised_with_a_warning(caplog):
    W, X = layer(tokens=30)  # 30 samples, 80 inputs: H is singular
    H = hessian(X)
    with caplog.at_level(logging.WARNING):
        qw, _ = gptq(W, H, 4, 16, True, damp_percent=0.0)
    assert "Cholesky" in caplog.text
    assert torch.isfinite(qw.dequantize()).all()


def test_unusable_hessian_falls_back_to_rtn(caplog):
    W, _ = layer()
    H = -torch.eye(W.shape[1])  # negative definite: no damping helps
    with caplog.at_level(logging.WARNING):
        res = gptq_quantize(W, H, QuantConfig(method="gptq", bits=4, group_size=16))
    assert "rounding this layer to nearest" in caplog.text
    assert torch.equal(res.weight.q, quantize_affine(W, 4, (1, 16)).q)


def test_nan_inputs_are_a_clear_error():
    W, X = layer()
    stats = HessianStats.zeros(W.shape[1])
    X[3, 5] = float("nan")
    stats.add(X)
    with pytest.raises(LowbitError, match="NaN or Inf"):
        gptq_quantize(W, stats, QuantConfig(method="gptq", bits=4, group_size=16))


def test_dead_inputs():
    W, X = layer()
    X[:, 3] = 0
    qw, _ = gptq(W, hessian(X), 4, 16, True)
    assert qw.dequantize()[:, 3].abs().max() == 0  # never-used inputs are set to zero


def test_hessian_stats_accumulate_in_batches():
    _, X = layer()
    stats = HessianStats.zeros(X.shape[1])
    for chunk in X.view(3, 200, -1):  # [batch, tokens, K] as hooks see it
        stats.add(chunk)
    assert stats.rows == 600
    assert torch.allclose(stats.H, hessian(X), rtol=1e-4, atol=1e-4)
    assert torch.allclose(stats.x_mean, X.abs().mean(0), rtol=1e-5)
    bf = HessianStats.zeros(X.shape[1])
    bf.add(X.bfloat16())  # bf16 activations: float32 statistics, bf16 rounding only
    assert bf.XtX.dtype == torch.float32
    assert torch.allclose(bf.H, hessian(X.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_lazy_blocksize_never_cuts_an_open_group():
    for gs, k in [(64, 576), (128, 576), (100, 300), (256, 1000), (576, 576), (300, 1000)]:
        bs = lazy_blocksize(128, gs, k)
        for g0 in range(0, k, gs):  # each group starts a block or ends inside the block it starts in
            b0 = (g0 // bs) * bs
            assert g0 == b0 or min(g0 + gs, k) <= b0 + bs, (gs, k, bs, g0)


@pytest.mark.parametrize("sym,act", [(True, True), (False, False)])
def test_clip_search_lowers_the_output_error(sym, act):
    errs = {}
    for clip in (False, True):
        cfg = QuantConfig(method="gptq", bits=3, group_size=16, sym=sym, act_order=act, clip_search=clip)
        total = 0.0
        for seed in range(3):
            W, X = layer(seed=seed)
            W[::3, 5] *= 6  # large weights, as trained LLM layers have a few of
            total += output_error(X, W, gptq_quantize(W, hessian(X), cfg).weight.dequantize())
        errs[clip] = total
    assert errs[True] < errs[False]


def test_rtn_clip_search_lowers_the_weight_error():
    from lowbit.algorithms.rtn import rtn_quantize

    W, _ = layer()
    W[::3, 5] *= 6
    plain = rtn_quantize(W, None, QuantConfig(method="rtn", bits=4, group_size=16))
    clipped = rtn_quantize(W, None, QuantConfig(method="rtn", bits=4, group_size=16, clip_search=True))
    assert clipped.loss < plain.loss


def test_hessian_of_bf16_inputs_is_exact_in_float32():
    # The product of bf16 inputs must not be rounded to bf16 (0.4% per entry: H indefinite).
    torch.manual_seed(0)
    x = (torch.randn(4096, 64) * torch.linspace(0.1, 10, 64)).bfloat16()
    stats = HessianStats.zeros(64)
    stats.add(x)
    exact = x.double().t() @ x.double()
    d = exact.diagonal().sqrt()
    rel = ((stats.XtX.double() - exact).abs() / (d[:, None] * d[None, :])).max().item()
    assert rel < 1e-5  # bf16 results: ~2e-3
    torch.linalg.cholesky(stats.H)  # positive definite without damping
