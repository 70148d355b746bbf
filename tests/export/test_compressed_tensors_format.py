"""compressed-tensors pack-quantized: transformers (with the compressed-tensors package) loads what
lowbit writes with the same logits; lowbit reads what compressed-tensors itself writes with the same
logits as transformers; round trips are bit-exact; what the format cannot hold is refused."""
import pytest
import torch
from exporthelp import clone, mutate_checkpoint, quant_layers, read_config, read_state, tokens

import lowbit
import tiny
from lowbit.errors import LowbitError

pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed (pip install -e .[dev])")


def rel_err(a, b):
    return ((a - b).norm() / a.norm()).item()


def transformers_load(folder, dequantize=False):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()


@pytest.mark.parametrize("bits, group_size, sym", [(4, 32, True), (4, 64, True), (8, -1, True), (4, 32, False)],
                         ids=["w4g32", "w4g64-ragged", "w8-channel", "w4g32-asym"])
def test_transformers_loads_ours_with_equal_logits(quantized, write, bits, group_size, sym):
    model, tok, cfg = quantized(bits, group_size, sym)
    folder = write(model, tok, cfg, "compressed-tensors")
    qc = read_config(folder)["quantization_config"]
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (qc["format"], weights["num_bits"], weights["symmetric"]) == ("pack-quantized", bits, sym)
    assert weights["strategy"] == ("channel" if group_size == -1 else "group")
    assert weights["group_size"] == {32: 32, 64: 32, -1: None}[group_size]  # 64 over 96/160 columns -> 32
    assert qc["ignore"] == ["lm_head"]
    # compressed-tensors 0.20's meta-device compress step leaves asymmetric zero points unpacked, so
    # transformers' default path refuses every asymmetric pack-quantized checkpoint (its own too, see
    # test_lowbit_reads_what_compressed_tensors_writes); dequantize=True loads them.
    theirs = transformers_load(folder, dequantize=not sym)
    x = tokens()
    with torch.no_grad():
        a, b = model(x).logits, theirs(x).logits
    assert rel_err(a, b) < 1e-4
    for name, layer in quant_layers(model).items():
        assert torch.equal(theirs.get_submodule(name).weight.float(), layer.dequantize()), name


def test_written_tensors_decode_with_compressed_tensors_own_unpacker(quantized, write):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    model, tok, cfg = quantized(4, 32, False)
    state = read_state(write(model, tok, cfg, "compressed-tensors"))
    for name, layer in quant_layers(model).items():
        n, k = layer.out_features, layer.in_features
        assert state[f"{name}.weight_shape"].tolist() == [n, k]
        q = unpack_from_int32(state[f"{name}.weight_packed"], 4, torch.Size([n, k])).float()  # signed codes
        zp = unpack_from_int32(state[f"{name}.weight_zero_point"], 4, torch.Size([n, k // 32]), packed_dim=0).float()
        scale = state[f"{name}.weight_scale"]
        w = (q.view(n, -1, 32) - zp[..., None]) * scale[..., None]
        assert torch.equal(w.view(n, k), layer.dequantize()), name


def _compressed_tensors_checkpoint(folder, symmetric):
    """A pack-quantized checkpoint written by compressed-tensors itself (min-max scales, group 32)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)

    model, tok = tiny.build("llama", seed=1)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=32)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)}, ignore=["lm_head"]),
        show_progress=False)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                n, k = module.weight.shape
                g = module.weight.view(n, k // 32, 32)
                if symmetric:
                    module.weight_scale.copy_(g.abs().amax(-1) / 7.5)
                else:
                    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
                    module.weight_scale.copy_((hi - lo) / 15)
                    module.weight_zero_point.copy_((-8 - torch.round(lo / module.weight_scale)).clamp(-8, 7))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("symmetric", [True, False])
def test_lowbit_reads_what_compressed_tensors_writes(tmp_path, symmetric):
    folder = _compressed_tensors_checkpoint(tmp_path / "ct", symmetric)
    ours = lowbit.load(folder, device="cpu")
    assert type(ours.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
    assert (ours.quant_config.bits, ours.quant_config.group_size, ours.quant_config.sym) == (4, 32, symmetric)
    theirs = transformers_load(folder, dequantize=not symmetric)
    x = tokens()
    with torch.no_grad():
        assert rel_err(theirs(x).logits, ours(x).logits) < 1e-4


def test_gptq_to_compressed_tensors_to_gptq_is_bit_exact(quantized, write, tmp_path):
    from lowbit.cli import main

    model, tok, cfg = quantized(8, 32, True)
    src = write(model, tok, cfg, "gptq")
    assert main(["export", str(src), "--format", "compressed-tensors", "--output-dir", str(tmp_path / "ct"), "-q"]) == 0
    assert main(["export", str(tmp_path / "ct"), "--format", "gptq", "--output-dir", str(tmp_path / "g2"), "-q"]) == 0
    a, b = read_state(src), read_state(tmp_path / "g2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ct" / "lowbit_report.json").is_file()


def test_what_compressed_tensors_cannot_hold_is_refused(quantized, write):
    model, tok, cfg = quantized(3, 32, True)
    with pytest.raises(LowbitError, match="3-bit weights have no pack-quantized layout"):
        write(model, tok, cfg, "compressed-tensors", name="w3")
    model, tok, cfg = quantized(4, 32, True)
    model = clone(model)
    layer = quant_layers(model)["model.layers.0.self_attn.o_proj"]
    layer.g_idx = layer.g_idx.flip(0).contiguous()
    with pytest.raises(LowbitError, match="model.layers.0.self_attn.o_proj was quantized with act-order"):
        write(model, tok, cfg, "compressed-tensors", name="actorder")


def _scheme(update):
    return lambda c: c["quantization_config"]["config_groups"]["group_0"].update(update)


@pytest.mark.parametrize("config_update, tensor_update, message", [
    (_scheme({"format": "naive-quantized"}), None, "format 'naive-quantized' is not supported"),
    (_scheme({"input_activations": {"num_bits": 8, "type": "int"}}), None, "quantizes activations too"),
    (lambda c: c["quantization_config"].update(quantization_status="frozen"), None, "quantization_status 'frozen'"),
    (_scheme({"weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 32}}),
     None, "tensor 'model.layers.0.self_attn.q_proj.weight_zero_point' is missing"),
    (None, lambda t: t.update({"model.layers.1.mlp.gate_proj.weight_packed": torch.zeros(160, 11, dtype=torch.int32)}),
     "tensor 'model.layers.1.mlp.gate_proj.weight_packed' has shape [160, 11], expected [160, 12]"),
    (None, lambda t: t.update({"model.layers.0.mlp.down_proj.weight_shape": torch.tensor([96, 128])}),
     "tensor 'model.layers.0.mlp.down_proj.weight_shape' is [96, 128], expected [96, 160]"),
], ids=["naive", "activations", "frozen", "missing-zero-point", "packed-shape", "weight-shape"])
def test_bad_checkpoint_fails_naming_the_problem(quantized, write, config_update, tensor_update, message):
    model, tok, cfg = quantized(4, 32, True)
    folder = write(model, tok, cfg, "compressed-tensors")
    mutate_checkpoint(folder, config_update, tensor_update)
    with pytest.raises(LowbitError) as e:
        lowbit.load(folder, device="cpu")
    assert message in str(e.value) and "\n" not in str(e.value)
