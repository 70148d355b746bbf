"""Adapters in the peft format: peft loads them onto the float base with the training-time
logits; merge is exactly W + B @ A * alpha / r; the merged model quantizes."""
import json

import pytest
import tiny
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.nn import Linear4bit
from lowbit.train import adapters, base, data
from lowbit.train.config import TrainConfig
from lowbit.train.lora import LoraLinear, LoraSettings, apply_lora
from lowbit.train.loop import train
from lowbit.train.merge import merge

peft = pytest.importorskip("peft")


def _records(n=24):
    words = ["fox", "dog", "quick", "lazy", "brown", "jumps", "over", "the"]
    return [{"instruction": f"Say {w} twice.", "response": f"{w} {w}"} for w in (words * 4)[:n]]


def _train(folder, out, load_in_4bit, steps=6, seed=0):
    torch.manual_seed(seed)
    model, tok = base.load_base(str(folder), load_in_4bit=load_in_4bit)
    examples = data.tokenize(_records(), tok, 64)
    settings = LoraSettings(r=4, alpha=8, dropout=0.05)
    apply_lora(model, settings)
    cfg = TrainConfig(output_dir=str(out), max_steps=steps, learning_rate=2e-2, logging_steps=2, save_steps=0,
                      per_device_train_batch_size=4)
    train(model, tok, examples, [], cfg, settings, str(folder), base.fingerprint(model), progress=False)
    return model, tok


def _float_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    runs = {}
    for bits4 in (False, True):
        model, _ = _train(tiny_llama_dir, out / f"run{int(bits4)}", bits4)
        runs[bits4] = (model, out / f"run{int(bits4)}")
    return runs


IDS = torch.randint(3, tiny.VOCAB, (2, 19), generator=torch.Generator().manual_seed(0))


def test_adapter_files_are_peft_format(trained):
    _, folder = trained[True]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape == (4, 96)
    assert len(keys) == 2 * 14 and "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys


def test_peft_loads_float_lora_with_identical_logits(trained, tiny_llama_dir):
    model, folder = trained[False]
    with torch.no_grad():
        ours = model(IDS).logits
        theirs = peft.PeftModel.from_pretrained(_float_model(tiny_llama_dir), str(folder)).eval()(IDS).logits
    assert (ours - theirs).abs().max() < 1e-5
    assert (ours - _float_model(tiny_llama_dir)(IDS).logits).abs().max() > 1e-3  # the adapter did change the model


def test_peft_on_dequantized_nf4_base_matches_qlora_model(trained, tiny_llama_dir):
    """The only difference between the QLoRA model and peft on the float base is the NF4
    base itself: with the base's weights replaced by their NF4 values, logits agree."""
    model, folder = trained[True]
    ref = _float_model(tiny_llama_dir)
    for name, m in model.named_modules():
        if isinstance(m, LoraLinear) and isinstance(m.base_layer, Linear4bit):
            ref.get_submodule(name).weight.data.copy_(m.base_layer.dequantize(torch.float32))
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(ref, str(folder)).eval()(IDS).logits
        ours = model(IDS).logits
    assert (ours - theirs).abs().max() < 1e-5


def test_lowbit_reloads_its_adapter(trained, tiny_llama_dir):
    model, folder = trained[True]
    again, _ = base.load_base(str(tiny_llama_dir), load_in_4bit=True)
    adapters.load_adapter(again, folder)
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, model(IDS).logits)


def test_merge_is_exactly_base_plus_scaled_product(trained, tiny_llama_dir, tmp_path):
    _, folder = trained[True]
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(tiny_llama_dir), "--adapter", str(folder), "--output-dir", str(out),
                 "--quiet"]) == 0
    base_model, merged = _float_model(tiny_llama_dir), _float_model(out)
    ad = adapters.read_adapter(folder)
    assert len(ad.layers) == 14
    for name, (a, b) in ad.layers.items():
        w = base_model.get_submodule(name).weight
        assert torch.equal(merged.get_submodule(name).weight, w + (b @ a) * (8 / 4))
    merged_sd = merged.state_dict()
    for key, t in base_model.state_dict().items():
        if not any(key.startswith(n + ".") for n in ad.layers):
            assert torch.equal(merged_sd[key], t), key
    # ...and it is a plain float model that `lowbit quantize` takes.
    q = tmp_path / "quantized"
    assert main(["quantize", "--model-path", str(out), "--output-dir", str(q), "--quantization-type", "rtn",
                 "--bits", "4", "--group-size", "32", "--format", "lowbit", "--quiet"]) == 0
    assert json.loads((q / "config.json").read_text())["quantization_config"]["method"] == "rtn"


def test_merge_to_bf16_rounds_the_float32_sum_once(trained, tiny_llama_dir, tmp_path):
    _, folder = trained[False]
    out = tmp_path / "merged16"
    assert main(["merge", "--base", str(tiny_llama_dir), "--adapter", str(folder), "--output-dir", str(out),
                 "--dtype", "bfloat16", "--quiet"]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.bfloat16
    base_model, ad = _float_model(tiny_llama_dir), adapters.read_adapter(folder)
    for name, (a, b) in ad.layers.items():
        w = base_model.get_submodule(name).weight
        assert torch.equal(merged.get_submodule(name).weight, (w + (b @ a) * 2.0).to(torch.bfloat16))


def test_merge_refuses_adapter_of_another_model(trained, tiny_dirs, tmp_path, capsys):
    _, folder = trained[False]
    out = tmp_path / "m"
    assert main(["merge", "--base", str(tiny_dirs("opt")), "--adapter", str(folder), "--output-dir", str(out)]) == 2
    assert "trained on another base model" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(LowbitError, match="no adapter_config.json"):
        merge(str(tiny_dirs("llama")), tmp_path, out)
