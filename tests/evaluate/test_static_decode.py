"""StaticDecoder: the static-cache forward equals the transformers forward; greedy tokens too."""
from __future__ import annotations

import pytest
import torch

import tiny
from lowbit.errors import LowbitError
from lowbit.evaluate.static_decode import StaticDecoder


def _assert_greedy_picks_argmax(dec, model, prompt, new_tokens):
    """The fused step (argmax, next input, position in one kernel) picks each token as the
    argmax of the transformers logits of the sequence so far (up to near ties)."""
    got, _ = dec.generate(prompt, new_tokens)
    t = prompt.shape[1]
    with torch.no_grad():
        ref = model(got).logits[0, t - 1:-1]  # the logits that chose tokens t..t + new_tokens - 1
    chosen = ref.gather(1, got[0, t:, None])[:, 0]
    assert got.shape == (1, t + new_tokens) and torch.all(chosen >= ref.max(dim=1).values - 1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(arch):
    model, _ = tiny.build(arch)
    ids = torch.randint(3, tiny.VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    dec = StaticDecoder(model, max_len=32)
    ours = torch.cat([dec.forward(ids[:, :8], torch.arange(8)),  # prefill, then one token at a time
                      *[dec.forward(ids[:, i:i + 1], torch.tensor([i])) for i in range(8, 12)]], dim=1)
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    _assert_greedy_picks_argmax(dec, model, ids[:, :7], 12)


def test_greedy_tokens_match_generate():
    model, _ = tiny.build("llama")
    prompt = torch.randint(3, tiny.VOCAB, (1, 6), generator=torch.Generator().manual_seed(1))
    tokens, seconds = StaticDecoder(model, max_len=32).generate(prompt, new_tokens=10)
    with torch.no_grad():
        ref = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    assert torch.equal(tokens, ref) and seconds >= 0


def test_refuses_what_it_cannot_run():
    with pytest.raises(LowbitError, match="static decoding supports"):
        StaticDecoder(tiny.build("opt")[0], max_len=16)
    dec = StaticDecoder(tiny.build("llama")[0], max_len=16)
    with pytest.raises(LowbitError, match="does not fit"):
        dec.generate(torch.ones(1, 10, dtype=torch.long), new_tokens=10)


def _rtn(model, bits=4, group_size=32):
    """Every decoder Linear -> QuantLinear (round to nearest), in place."""
    from lowbit.formats import group_block, quantize_affine
    from lowbit.nn import QuantLinear

    for layer in model.model.layers:
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                              (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                lin = getattr(parent, name)
                aq = quantize_affine(lin.weight.data, bits, group_block(lin.in_features, group_size), sym=False)
                setattr(parent, name, QuantLinear.from_quantized(aq, group_size, lin.bias))
    return model


@pytest.mark.parametrize("arch,quantized", [("llama", False), ("qwen2", True)])
def test_fused_path_matches_transformers(arch, quantized):
    """Merged projections + fused Triton glue (interpreted on CPU) give the transformers logits."""
    pytest.importorskip("triton")
    import transformers as tf

    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[arch]
    torch.manual_seed(3)  # head size 32: the fused kernels want a power of two
    model = model_cls(cfg_cls(hidden_size=128, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=tiny.VOCAB, max_position_embeddings=256)).eval()
    if quantized:
        _rtn(model)
    # On a CUDA machine the kernels are compiled (float32 model: QuantLinear takes the
    # reference path, the glue kernels run); on CPU they are interpreted.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    ids = torch.randint(3, tiny.VOCAB, (1, 9), generator=torch.Generator().manual_seed(2)).to(device)
    dec = StaticDecoder(model, max_len=80, fused=True)  # 80 > one 64-key block of the attention kernel
    assert dec.fused and all(m is not None for m in dec.qkv + dec.gate_up)
    assert not StaticDecoder(tiny.build(arch)[0].to(device), max_len=16, fused=True).fused  # head size 24
    ours = torch.cat([dec.forward(ids[:, :7], torch.arange(7, device=device)),
                      *[dec.forward(ids[:, i:i + 1], torch.tensor([i], device=device)) for i in range(7, 9)]], dim=1)
    with torch.no_grad():
        ref = model(ids).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    _assert_greedy_picks_argmax(dec, model, ids[:, :7], 12)


def test_interleaved_gate_up_gives_silu_of_gate_times_up():
    """interleave_outputs + SiluGateUp (reference kernels here) = silu(gate(x)) * up(x)."""
    from lowbit.evaluate.static_decode import SiluGateUp, interleave_outputs, merge_linears
    from lowbit.formats import group_block, quantize_affine
    from lowbit.nn import QuantLinear

    gen = torch.Generator().manual_seed(0)
    gate, up = (QuantLinear.from_quantized(quantize_affine(torch.randn(24, 64, generator=gen), 4, group_block(64, 32),
                                                           sym=False), 32) for _ in range(2))
    inter = interleave_outputs(merge_linears([gate, up]))
    assert torch.equal(inter.dequantize()[0::2], gate.dequantize()) and torch.equal(inter.dequantize()[1::2],
                                                                                    up.dequantize())
    x = torch.randn(3, 64, generator=gen)
    torch.testing.assert_close(SiluGateUp(inter)(x), torch.nn.functional.silu(gate(x)) * up(x))
