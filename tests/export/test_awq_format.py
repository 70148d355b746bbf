"""AWQ (AutoAWQ GEMM) checkpoints: the interleaved packing decodes, by the published layout, to
exactly our weights; what AWQ cannot hold is refused; round trips are bit-exact; GPTQModel's AWQ
kernel (through transformers) loads ours when it is installed; bad files fail clearly."""
import numpy as np
import pytest
import torch
from exporthelp import clone, mutate_checkpoint, quant_layers, read_config, read_state, tokens

import lowbit
from lowbit.errors import LowbitError

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_decode(state: dict, name: str, group_size: int) -> torch.Tensor:
    """Weight [N, K] from AutoAWQ GEMM tensors, from the format description: qweight [K, N/8], nibble i
    (bits 4i..4i+3) of word j holds column 8j + AWQ_ORDER[i]; qzeros [K/G, N/8] the same way; zeros as
    they are; w = scales[k // G, n] * (q - z)."""
    qweight = state[f"{name}.qweight"].numpy().astype(np.int64) & 0xFFFFFFFF
    qzeros = state[f"{name}.qzeros"].numpy().astype(np.int64) & 0xFFFFFFFF
    scales = state[f"{name}.scales"].float().numpy()

    def nibbles(words):
        out = np.zeros((words.shape[0], words.shape[1] * 8), dtype=np.int64)
        for i, col in enumerate(AWQ_ORDER):
            out[:, col::8] = (words >> (4 * i)) & 0xF
        return out

    q, z = nibbles(qweight), nibbles(qzeros)
    g = np.arange(q.shape[0]) // group_size
    w = (q - z[g]).astype(np.float32) * scales[g]
    return torch.from_numpy(w.T.copy())


@pytest.mark.parametrize("sym", [True, False])
def test_written_tensors_decode_to_our_exact_weights(quantized, write, sym):
    model, tok, cfg = quantized(4, 32, sym)
    folder = write(model, tok, cfg, "awq")
    qc = read_config(folder)["quantization_config"]
    assert qc == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
                  "modules_to_not_convert": ["lm_head"]}
    state = read_state(folder)
    assert not any(k.endswith(".g_idx") for k in state)
    for name, layer in quant_layers(model).items():
        assert state[f"{name}.qweight"].shape == (layer.in_features, layer.out_features // 8)
        assert torch.equal(awq_decode(state, name, 32), layer.dequantize()), name


def test_reads_back_bit_exact_and_ragged_groups_split(quantized, write):
    model, tok, cfg = quantized(4, 64, False)  # 96 and 160 input columns: written as group 32
    folder = write(model, tok, cfg, "awq")
    assert read_config(folder)["quantization_config"]["group_size"] == 32
    state = read_state(folder)
    back = lowbit.load(folder, device="cpu")
    assert back.quant_config.method == "awq"  # no lowbit_report.json to say rtn: the format's usual method
    for name, layer in quant_layers(model).items():
        assert torch.equal(awq_decode(state, name, 32), layer.dequantize())
        assert torch.equal(back.get_submodule(name).dequantize(), layer.dequantize())
    x = tokens()
    with torch.no_grad():
        assert torch.equal(back(x).logits, model(x).logits)


def test_awq_to_compressed_tensors_to_awq_is_bit_exact(quantized, write, tmp_path):
    from lowbit.cli import main

    model, tok, cfg = quantized(4, 32, False)
    src = write(model, tok, cfg, "awq")
    assert main(["export", str(src), "--format", "compressed-tensors", "--output-dir", str(tmp_path / "ct"), "-q"]) == 0
    assert main(["export", str(tmp_path / "ct"), "--format", "awq", "--output-dir", str(tmp_path / "awq2"), "-q"]) == 0
    a, b = read_state(src), read_state(tmp_path / "awq2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_what_awq_cannot_hold_is_refused(quantized, write):
    model, tok, cfg = quantized(3, 32, False)
    with pytest.raises(LowbitError, match="3-bit weights; the AWQ GEMM layout .* holds 4-bit weights only"):
        write(model, tok, cfg, "awq", name="w3")
    model, tok, cfg = quantized(4, 32, False, lm_head=True)
    with pytest.raises(LowbitError, match="keeps lm_head in float"):
        write(model, tok, cfg, "awq", name="head")
    model, tok, cfg = quantized(4, 32, False)
    model = clone(model)
    layer = quant_layers(model)["model.layers.1.mlp.up_proj"]
    layer.g_idx = layer.g_idx.flip(0).contiguous()
    with pytest.raises(LowbitError, match="model.layers.1.mlp.up_proj was quantized with act-order"):
        write(model, tok, cfg, "awq", name="actorder")


@pytest.mark.parametrize("config_update, tensor_update, message", [
    (lambda c: c["quantization_config"].update(version="gemv"), None, "awq version 'gemv' is not supported"),
    (lambda c: c["quantization_config"].update(bits=8), None, "8-bit weights is not supported"),
    (None, lambda t: t.update({"model.layers.0.self_attn.k_proj.qzeros": torch.zeros(3, 5, dtype=torch.int32)}),
     "tensor 'model.layers.0.self_attn.k_proj.qzeros' has shape [3, 5], expected [3, 6]"),
    (None, lambda t: t.update({"model.layers.0.self_attn.v_proj.qweight":
                               t["model.layers.0.self_attn.v_proj.qweight"].to(torch.int64)}),
     "tensor 'model.layers.0.self_attn.v_proj.qweight' has dtype int64, expected int32"),
], ids=["gemv", "bits-8", "qzeros-shape", "qweight-dtype"])
def test_bad_checkpoint_fails_naming_the_problem(quantized, write, config_update, tensor_update, message):
    model, tok, cfg = quantized(4, 32, False)
    folder = write(model, tok, cfg, "awq")
    mutate_checkpoint(folder, config_update, tensor_update)
    with pytest.raises(LowbitError) as e:
        lowbit.load(folder, device="cpu")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_gptqmodel_awq_kernel_loads_ours_with_the_same_weights_and_logits(quantized, write):
    """Reference loader: transformers' AWQ integration (GPTQModel's pure-torch AWQ kernel), when installed."""
    pytest.importorskip("gptqmodel", reason="GPTQModel is not installed (transformers' AWQ loader needs it)")
    from transformers import AutoModelForCausalLM, AwqConfig

    model, tok, cfg = quantized(4, 32, False)
    folder = write(model, tok, cfg, "awq")
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                  quantization_config=AwqConfig(bits=4, backend="torch_awq"))
    x = tokens()
    with torch.no_grad():
        a, b = model(x).logits, theirs(x).logits
    # GPTQModel's AWQ kernel dequantizes in fp16: the same codes, fp16 rounding of the products.
    assert ((a - b).norm() / a.norm()).item() < 1e-3


def test_older_checkpoints_with_settings_in_a_side_file_load(quantized, write):
    """AutoAWQ (quant_config.json) and AutoGPTQ (quantize_config.json) kept the settings beside config.json."""
    import json

    model, tok, cfg = quantized(4, 32, False)
    x = tokens()
    for fmt, side, settings in [("awq", "quant_config.json", {"zero_point": True, "q_group_size": 32, "w_bit": 4,
                                                                  "version": "GEMM"}),
                                ("gptq", "quantize_config.json", None)]:
        folder = write(model, tok, cfg, fmt, name=f"legacy-{fmt}")
        config = read_config(folder)
        qc = config.pop("quantization_config")
        (folder / "config.json").write_text(json.dumps(config))
        (folder / side).write_text(json.dumps(settings or {k: v for k, v in qc.items() if k != "quant_method"}))
        back = lowbit.load(folder, device="cpu")
        with torch.no_grad():
            assert torch.equal(back(x).logits, model(x).logits), fmt
