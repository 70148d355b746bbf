"""Save -> load gives the same model; damaged checkpoints fail clearly."""
import json

import pytest
import torch

import lowbit
import tiny
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.models.checkpoint import save_checkpoint
from lowbit.nn import QuantLinear
from lowbit.quantize import quantize_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, tok = tiny.build("llama")
    cfg = QuantConfig(method="rtn", bits=4, group_size=32)
    quantize_model(model, cfg, progress=False)
    out = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(model, tok, cfg, out)
    return model, out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "phi3", "opt"])
def test_save_then_load_gives_identical_logits(arch, tmp_path):
    model, tok = tiny.build(arch)
    cfg = QuantConfig(method="rtn", bits=4, group_size=32)
    quantize_model(model, cfg, progress=False)
    save_checkpoint(model, tok, cfg, tmp_path)
    loaded = lowbit.load(tmp_path, device="cpu")
    x = torch.randint(0, tiny.VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    n_quantized = sum(isinstance(m, QuantLinear) for m in model.modules())
    assert n_quantized > 0
    assert sum(isinstance(m, QuantLinear) for m in loaded.modules()) == n_quantized


def test_loaded_model_has_its_tokenizer_and_generates(saved):
    _, folder = saved
    model = lowbit.load(folder, device="cpu")
    ids = model.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 4)
    assert model.quant_config.bits == 4


def test_tied_embeddings_are_stored_once(saved):
    from safetensors import safe_open

    _, folder = saved
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys


def test_truncated_safetensors_is_a_clear_error(saved, tmp_path):
    folder = _copy(saved[1], tmp_path / "c")
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(LowbitError, match="corrupt or truncated"):
        lowbit.load(folder, device="cpu")


def test_garbage_safetensors_is_a_clear_error(saved, tmp_path):
    folder = _copy(saved[1], tmp_path / "c")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    with pytest.raises(LowbitError, match="corrupt or truncated"):
        lowbit.load(folder, device="cpu")


def test_malformed_quantization_config_is_a_clear_error(saved, tmp_path):
    folder = _copy(saved[1], tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["bits"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LowbitError, match="--bits 7"):
        lowbit.load(folder, device="cpu")


def test_unknown_quant_method_lists_supported_ones(saved, tmp_path):
    folder = _copy(saved[1], tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mystery"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LowbitError, match="quant_method 'mystery'; supported: .*lowbit"):
        lowbit.load(folder, device="cpu")


def test_missing_tensor_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved[1], tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.scales"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(LowbitError, match="missing tensor 'model.layers.1.mlp.up_proj.scales'"):
        lowbit.load(folder, device="cpu")


def test_tensor_of_the_wrong_shape_is_a_clear_error(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(saved[1], tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.qweight"] = tensors["model.layers.0.mlp.up_proj.qweight"][:-1]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(LowbitError, match="does not match its config"):
        lowbit.load(folder, device="cpu")
