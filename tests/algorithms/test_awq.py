"""AWQ: folding scales keeps the float model's outputs, the scale search and clipping never
lose to round-to-nearest on their objective, and the second-moment error is exact."""
import math

import pytest
import torch
import tiny

from lowbit.algorithms.awq import (awq_quantize, can_fold, clip_range, fake_quant, fold_scale, output_error,
                                   rescale_stats, search_scale)
from lowbit.algorithms.gptq import HessianStats
from lowbit.config import QuantConfig
from lowbit.models.registry import get_arch, get_blocks


# tiny tensors: see the one_thread fixture (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(k=64, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, k, generator=g)
    X[:, :4] *= 20  # salient channels, as in LLM activations
    return X


def stats_of(X):
    s = HessianStats.zeros(X.shape[1])
    s.add(X)
    return s


@pytest.mark.parametrize("arch", ["llama", "gemma2", "opt", "phi3"])
def test_folding_scales_keeps_the_float_outputs(arch):
    """Every foldable group of every block, random scales in [0.2, 5]: same logits."""
    model, _ = tiny.build(arch)
    x = torch.randint(3, tiny.VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).logits
    g = torch.Generator().manual_seed(1)
    folded = 0
    for block in get_blocks(model):
        for group in get_arch(model).awq_groups:
            layers = [block.get_submodule(n) for n in group.layers]
            prev = block.get_submodule(group.prev)
            if not can_fold(prev, layers[0].in_features):
                continue
            s = torch.exp(torch.empty(layers[0].in_features).uniform_(math.log(0.2), math.log(5), generator=g))
            fold_scale(prev, layers, s, get_arch(model).norm_offset)
            folded += 1
    with torch.no_grad():
        out = model(x).logits
    assert folded >= 2 * len(get_blocks(model))
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), (out - ref).abs().max()


def test_gqa_v_to_o_is_skipped():
    model, _ = tiny.build("llama")  # 4 heads, 2 kv heads: v_proj writes 48 channels, o_proj reads 96
    block = get_blocks(model)[0]
    assert not can_fold(block.self_attn.v_proj, block.self_attn.o_proj.in_features)
    assert can_fold(block.input_layernorm, block.self_attn.q_proj.in_features)


def test_second_moment_error_is_the_mean_output_error():
    X = inputs()
    D = torch.randn(16, 64)
    Sigma = stats_of(X).H / 2
    direct = (X @ D.t()).pow(2).mean().item()  # over tokens and outputs
    assert output_error(D, Sigma) == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("bits,gs,sym", [(4, 16, False), (3, 32, False), (4, -1, True)])
def test_scale_search_never_loses_to_rtn_and_helps_salient_channels(bits, gs, sym):
    X = inputs()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(2))
    st = stats_of(X)
    s, alpha, duo, losses = search_scale(W, st.x_mean, st.H / 2, bits, gs, sym)
    assert len(losses) == 40  # the paper's 20 candidates, then AutoAWQ's 20 "duo" ones
    rtn = output_error(fake_quant(W, bits, gs, sym) - W, st.H / 2)
    assert losses[0] == pytest.approx(rtn, rel=1e-5)  # alpha = 0 is round-to-nearest
    best = output_error(fake_quant(W * s, bits, gs, sym) / s - W, st.H / 2)
    assert best == pytest.approx(min(losses), rel=1e-5)
    assert (alpha > 0 or duo) and best < 0.9 * rtn
    assert s[:4].min() > s[4:].max()  # salient channels are scaled up


def test_rescaled_statistics_are_those_of_the_scaled_inputs():
    X = inputs()
    s = torch.rand(64) + 0.5
    st = stats_of(X)
    rescale_stats(st, s)
    ref = stats_of(X / s)
    assert torch.allclose(st.H, ref.H, rtol=1e-4, atol=1e-3) and torch.allclose(st.x_mean, ref.x_mean, rtol=1e-5)


@pytest.mark.parametrize("sym", [False, True])
def test_clipping_never_increases_any_groups_error(sym):
    X = inputs(tokens=256)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    W[:, 5] *= 8  # an outlier weight column widens its group's range
    Sigma = stats_of(X).H / 2
    Wc = clip_range(W, Sigma, 3, 16, sym)
    assert (Wc.abs() <= W.abs() + 1e-6).all()

    def group_errors(Q):
        D = (Q - W).view(32, 4, 16)
        S = torch.stack([Sigma[g * 16:(g + 1) * 16, g * 16:(g + 1) * 16] for g in range(4)])
        return torch.einsum("ngk,gkl,ngl->ng", D, S, D)

    clipped, plain = group_errors(fake_quant(Wc, 3, 16, sym)), group_errors(fake_quant(W, 3, 16, sym))
    assert (clipped <= plain * (1 + 1e-5)).all()
    assert clipped.sum() < plain.sum()


def test_awq_quantize_layer():
    X = inputs()
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(4))
    cfg = QuantConfig(method="awq", bits=4, group_size=16)
    assert cfg.sym is False  # zero point on by default
    res = awq_quantize(W, stats_of(X), cfg)
    no_clip = awq_quantize(W, stats_of(X), cfg, clip=False)
    assert res.loss <= no_clip.loss
    assert res.weight.g_idx.equal((torch.arange(64) // 16).int())
    assert res.loss == pytest.approx(output_error(res.weight.dequantize() - W, stats_of(X).H / 2), rel=1e-5)
