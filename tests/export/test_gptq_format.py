"""GPTQ checkpoints: what lowbit writes decodes, by the published layout, to exactly its weights;
the v1/v2 zero-point conventions; ragged and act-order groups; lowbit reads them back bit for bit;
GPTQModel (through transformers) loads them when it is installed; bad files fail clearly."""
import logging

import numpy as np
import pytest
import torch
from exporthelp import clone, decode_stream, mutate_checkpoint, quant_layers, read_config, read_state, tokens

import lowbit
from lowbit.errors import LowbitError
from lowbit.formats import pack, unpack


def gptq_decode(state: dict, name: str, k: int, n: int, bits: int, v1: bool) -> torch.Tensor:
    """Weight [N, K] from a layer's GPTQ tensors, written from the format description, not lowbit's code:
    qweight [K*b/32, N] holds column n's codes as one bit stream along K; qzeros [G, N*b/32] the zero points
    along N (stored minus 1 in v1); w = scales[g, n] * (q - z) with g = g_idx[k]."""
    qweight = state[f"{name}.qweight"].numpy()
    qzeros = state[f"{name}.qzeros"].numpy()
    scales = state[f"{name}.scales"].float().numpy()
    g_idx = state[f"{name}.g_idx"].numpy().astype(np.int64)
    q = np.stack([decode_stream(qweight[:, j], bits, k) for j in range(n)], axis=1)  # [K, N]
    z = np.stack([decode_stream(qzeros[g], bits, n) for g in range(qzeros.shape[0])])  # [G, N]
    if v1:
        z = z + 1
    w = (q - z[g_idx]).astype(np.float32) * scales[g_idx]
    return torch.from_numpy(w.T.copy())


@pytest.mark.parametrize("bits, sym", [(2, True), (3, False), (4, True), (4, False), (8, False)])
def test_written_tensors_decode_to_our_exact_weights(quantized, write, bits, sym):
    model, tok, cfg = quantized(bits, 32, sym)
    folder = write(model, tok, cfg, "gptq")
    qc = read_config(folder)["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == ("gptq", bits, 32, sym, False)
    state = read_state(folder)
    for name, layer in quant_layers(model).items():
        w = gptq_decode(state, name, layer.in_features, layer.out_features, bits, qc["checkpoint_format"] == "gptq")
        assert torch.equal(w, layer.dequantize(torch.float32)), name
        assert state[f"{name}.scales"].dtype == torch.float16


def test_symmetric_zero_points_follow_the_v1_and_v2_conventions(quantized, write):
    model, tok, cfg = quantized(4, 32, True)
    v1 = read_state(write(model, tok, cfg, "gptq", name="v1"))
    v2 = read_state(write(model, tok, cfg, "gptq", name="v2", checkpoint_format="gptq_v2"))
    name = "model.layers.0.self_attn.q_proj.qzeros"
    # zero 8 in every nibble: stored as 7 (0x77777777) by v1, as 8 (0x88888888) by v2.
    assert (v1[name] == 0x77777777).all()
    assert (v2[name].to(torch.int64) & 0xFFFFFFFF == 0x88888888).all()


def _with_zero_point_0(model):
    """A copy whose first layer has a group with zero point 0 (asymmetric: no negative weight there)."""
    model = clone(model)
    layer = quant_layers(model)["model.layers.0.self_attn.q_proj"]
    z = unpack(layer.qzeros, layer.bits, layer.out_features, dim=1)
    z[0, :5] = 0
    layer.qzeros = pack(z, layer.bits, dim=1)
    return model, layer


def test_zero_point_0_is_written_as_gptq_v2_or_refused_in_v1(quantized, write, caplog):
    model, tok, cfg = quantized(4, 32, False)
    model, layer = _with_zero_point_0(model)
    with caplog.at_level(logging.WARNING):
        folder = write(model, tok, cfg, "gptq")
    assert read_config(folder)["quantization_config"]["checkpoint_format"] == "gptq_v2"
    assert "gptq_v2" in caplog.text
    state = read_state(folder)
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(gptq_decode(state, name, 96, 96, 4, v1=False), layer.dequantize())
    back = lowbit.load(folder, device="cpu")
    assert torch.equal(back.model.layers[0].self_attn.q_proj.dequantize(), layer.dequantize())
    with pytest.raises(LowbitError, match="zero point of 0 has no GPTQ v1 code"):
        write(model, tok, cfg, "gptq", name="forced-v1", checkpoint_format="gptq")


def test_v1_file_holding_a_wrapped_zero_point_is_refused(quantized, write):
    model, tok, cfg = quantized(4, 32, False)
    folder = write(model, tok, cfg, "gptq")
    name = "model.layers.1.mlp.up_proj.qzeros"

    def wrap(t):
        t[name][0, 0] = t[name][0, 0] | 0xF  # the v1 code of zero point 0 after wrapping: 15

    mutate_checkpoint(folder, tensor_update=wrap)
    with pytest.raises(LowbitError, match=f"tensor '{name}' holds the GPTQ v1 code 15"):
        lowbit.load(folder, device="cpu")


def test_ragged_groups_are_split_into_a_common_group_size(quantized, write, caplog):
    model, tok, cfg = quantized(4, 64, True)  # K = 96 and 160: groups of 64 leave 32 columns
    with caplog.at_level(logging.WARNING):
        folder = write(model, tok, cfg, "gptq")
    assert "group size 64 written as 32" in caplog.text
    assert read_config(folder)["quantization_config"]["group_size"] == 32
    state = read_state(folder)
    layers = quant_layers(model)
    assert layers["model.layers.0.mlp.down_proj"].scales.shape[0] == 3 and state["model.layers.0.mlp.down_proj.scales"].shape[0] == 5
    back = quant_layers(lowbit.load(folder, device="cpu"))
    for name, layer in layers.items():
        assert torch.equal(gptq_decode(state, name, layer.in_features, layer.out_features, 4, True), layer.dequantize())
        assert torch.equal(back[name].dequantize(), layer.dequantize()), name


def test_act_order_g_idx_is_kept(quantized, write):
    model, tok, cfg = quantized(4, 32, False)
    model = clone(model)
    for layer in quant_layers(model).values():
        perm = torch.randperm(layer.in_features, generator=torch.Generator().manual_seed(layer.in_features))
        layer.g_idx = layer.g_idx[perm].contiguous()  # a column order like GPTQ's act-order produces
    folder = write(model, tok, cfg, "gptq")
    assert read_config(folder)["quantization_config"]["desc_act"] is True
    state = read_state(folder)
    back = quant_layers(lowbit.load(folder, device="cpu"))
    for name, layer in quant_layers(model).items():
        assert torch.equal(state[f"{name}.g_idx"], layer.g_idx)
        assert torch.equal(gptq_decode(state, name, layer.in_features, layer.out_features, 4, True), layer.dequantize())
        assert torch.equal(back[name].g_idx, layer.g_idx)


def test_lowbit_to_gptq_to_lowbit_is_bit_exact(quantized, write, tmp_path):
    from lowbit.cli import main

    model, tok, cfg = quantized(4, 32, False, lm_head=True)
    src = write(model, tok, cfg, "gptq")
    assert read_config(src)["quantization_config"]["lm_head"] is True
    assert main(["export", str(src), "--format", "lowbit", "--output-dir", str(tmp_path / "lb"), "-q"]) == 0
    assert main(["export", str(tmp_path / "lb"), "--format", "gptq", "--output-dir", str(tmp_path / "g2"), "-q"]) == 0
    assert read_config(tmp_path / "lb")["quantization_config"]["quant_method"] == "lowbit"
    a, b = read_state(src), read_state(tmp_path / "g2")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    final = lowbit.load(tmp_path / "lb", device="cpu")
    for name, layer in quant_layers(model).items():
        got = final.get_submodule(name)
        for buf in ("qweight", "qzeros", "scales", "g_idx"):
            assert torch.equal(getattr(got, buf), getattr(layer, buf)), (name, buf)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(final(x).logits, model(x).logits)


def _set(path, value):
    def update(cfg):
        *keys, last = path
        d = cfg
        for key in keys:
            d = d[key]
        d[last] = value
    return update


@pytest.mark.parametrize("config_update, tensor_update, message", [
    (_set(["quantization_config", "bits"], 8), None,
     "tensor 'model.layers.0.self_attn.q_proj.qweight' has shape [12, 96], expected [24, 96] for 8-bit"),
    (_set(["quantization_config", "desc_act"], True), lambda t: t.pop("model.layers.0.mlp.gate_proj.g_idx"),
     "tensor 'model.layers.0.mlp.gate_proj.g_idx' is missing: an act-order (desc_act) checkpoint needs it"),
    (None, lambda t: t.update({"model.layers.1.self_attn.o_proj.scales": torch.ones(2, 96, dtype=torch.float16)}),
     "tensor 'model.layers.1.self_attn.o_proj.scales' has shape [2, 96], expected [3, 96]"),
    (None, lambda t: t.pop("model.layers.1.mlp.down_proj.qzeros"),
     "tensor 'model.layers.1.mlp.down_proj.qzeros' is missing"),
    (_set(["quantization_config", "checkpoint_format"], "marlin"), None, "checkpoint_format 'marlin'"),
    (_set(["quantization_config", "bits"], 5), None, "5-bit weights is not supported"),
    (_set(["quantization_config", "quant_method"], "hqq"), None,
     "quant_method 'hqq'; supported: lowbit, gptq, awq, compressed-tensors"),
], ids=["bits-vs-shape", "missing-g_idx", "scales-shape", "missing-qzeros", "marlin", "bits-5", "unknown-method"])
def test_bad_checkpoint_fails_naming_the_problem(quantized, write, config_update, tensor_update, message):
    model, tok, cfg = quantized(4, 32, True)
    folder = write(model, tok, cfg, "gptq")
    mutate_checkpoint(folder, config_update, tensor_update)
    with pytest.raises(LowbitError) as e:
        lowbit.load(folder, device="cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_g_idx_without_act_order_means_consecutive_groups(quantized, write):
    model, tok, cfg = quantized(4, 32, True)
    folder = write(model, tok, cfg, "gptq")
    mutate_checkpoint(folder, tensor_update=lambda t: [t.pop(k) for k in list(t) if k.endswith(".g_idx")])
    back = lowbit.load(folder, device="cpu")
    x = tokens()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)


def test_layers_left_in_float_are_named_for_every_loader(write):
    from exporthelp import quantize_tiny

    model, tok, cfg = quantize_tiny(4, 32, True, skip=("mlp.down_proj",))
    folder = write(model, tok, cfg, "gptq")
    qc = read_config(folder)["quantization_config"]
    assert qc["dynamic"] == {r"-:^model\.layers\.0\.mlp\.down_proj$": {}, r"-:^model\.layers\.1\.mlp\.down_proj$": {}}
    assert qc["modules_in_block_to_quantize"] == [["mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                                                   "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]]
    back = lowbit.load(folder, device="cpu")
    assert type(back.model.layers[1].mlp.down_proj).__name__ == "Linear"
    x = tokens()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)


@pytest.mark.parametrize("sym, checkpoint_format, skip", [(True, "gptq", ()), (False, "gptq", ()),
                                                          (False, "gptq_v2", ()), (True, "gptq", ("mlp.down_proj",))],
                         ids=["v1-sym", "v1-asym", "v2-asym", "v1-skipped-layers"])
def test_gptqmodel_loads_ours_with_the_same_weights_and_logits(quantized, write, sym, checkpoint_format, skip):
    """Reference loader: transformers + GPTQModel (its pure-torch kernel), when installed."""
    pytest.importorskip("gptqmodel", reason="GPTQModel is not installed (reference loader for GPTQ)")
    pytest.importorskip("optimum", reason="optimum is not installed (transformers' GPTQ path needs it)")
    from exporthelp import quantize_tiny
    from transformers import AutoModelForCausalLM, GPTQConfig

    model, tok, cfg = quantize_tiny(4, 32, sym, skip=skip) if skip else quantized(4, 32, sym)
    folder = write(model, tok, cfg, "gptq", checkpoint_format=checkpoint_format)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                  quantization_config=GPTQConfig(bits=4, backend="torch"))
    for name, layer in quant_layers(model).items():
        # GPTQModel dequantizes in the fp16 of its scales: our exact weights rounded once to fp16.
        w = theirs.get_submodule(name).dequantize_weight().t()
        assert torch.equal(w.half(), layer.dequantize(torch.float32).half()), name
    x = tokens()
    with torch.no_grad():
        a, b = model(x).logits, theirs(x).logits
    assert ((a - b).norm() / a.norm()).item() < 1e-3
