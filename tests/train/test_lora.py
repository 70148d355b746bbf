"""LoRA layers: start at the base exactly, target resolution, parameter counts, and the
memory-lean backward through a frozen 4-bit base."""
import pytest
import tiny
import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.nn import Linear4bit
from lowbit.train import base as train_base
from lowbit.train.lora import LoraLinear, LoraSettings, apply_lora, count_parameters, frozen_forward, trainable_summary


def test_lora_starts_at_base_and_adds_scaled_update():
    torch.manual_seed(0)
    lin = nn.Linear(24, 40)
    layer = LoraLinear(lin, r=4, alpha=8, dropout=0.0)
    x = torch.randn(3, 5, 24)
    assert torch.equal(layer(x), lin(x))  # B = 0 at init
    nn.init.normal_(layer.lora_B.weight)
    expected = lin(x) + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T * 2.0
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), layer.lora_B.weight @ layer.lora_A.weight * 2.0)


def test_frozen_4bit_backward_matches_dequantized_weight():
    torch.manual_seed(0)
    q = Linear4bit.from_linear(nn.Linear(128, 48), compute_dtype=torch.float32)
    x = torch.randn(2, 7, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = frozen_forward(q, x)
    # Autograd keeps nothing for backward (a plain F.linear would keep the dequantized weight).
    assert saved == []
    g = torch.randn_like(y)
    y.backward(g)
    w = q.dequantize(torch.float32)
    torch.testing.assert_close(y, x.detach() @ w.T + q.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, g @ w, rtol=1e-5, atol=1e-5)


def test_default_targets_are_all_block_linears_and_only_lora_trains():
    model, _ = tiny.build("llama")
    names = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    assert len(names) == 2 * 7 and all(n.startswith("model.layers.") for n in names)
    assert all(isinstance(model.get_submodule(n), LoraLinear) for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


@pytest.mark.parametrize("targets, count", [(["q_proj", "v_proj"], 4), (["self_attn.o_proj"], 2),
                                             (["q_proj,k_proj"], 4), (["all-linear"], 14)])
def test_target_names_and_suffixes(targets, count):
    model, _ = tiny.build("llama")
    targets = [t for v in targets for t in v.split(",")]
    assert len(apply_lora(model, LoraSettings(r=2, alpha=4, target_modules=targets))) == count


def test_targets_matching_nothing_are_refused_with_the_available_names():
    model, _ = tiny.build("llama")
    with pytest.raises(LowbitError, match=r"qproj match no Linear.*available.*q_proj"):
        apply_lora(model, LoraSettings(target_modules=["q_proj", "qproj"]))


@pytest.mark.parametrize("kwargs, msg", [({"r": 0}, "--lora-r"), ({"alpha": -1}, "--lora-alpha"),
                                         ({"dropout": 1.0}, "--lora-dropout")])
def test_bad_lora_settings(kwargs, msg):
    with pytest.raises(LowbitError, match=msg):
        LoraSettings(**kwargs)


def test_parameter_count_matches_peft_on_float_and_counts_4bit_logically():
    peft = pytest.importorskip("peft")
    model, _ = tiny.build("llama")
    ref, _ = tiny.build("llama")
    apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    pm = peft.get_peft_model(ref, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert count_parameters(model) == tuple(pm.get_nb_trainable_parameters())
    line = trainable_summary(model)
    assert line.startswith("trainable params: ") and " || all params: " in line and " || trainable%: " in line
    # Same model with a 4-bit base: the same logical total.
    q, _ = tiny.build("llama")
    train_base.quantize_base_4bit(q)
    apply_lora(q, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert count_parameters(q) == count_parameters(model)
