"""Quantization while loading: lowbit.load(..., load_in_4bit / load_in_8bit / quantization_config,
device_map), skip modules, CPU offload placement, bad input."""
import logging

import pytest
import torch
from torch import nn

import lowbit
from lowbit.config import BnbConfig
from lowbit.errors import LowbitError
from lowbit.models import device_map as dm
from lowbit.models.load import load_float
from lowbit.models.onthefly import matches, plan, quantize_model_bnb, runnable_dtype
from lowbit.nn import Linear4bit, Linear8bitLt

IDS = torch.tensor([[1, 5, 9, 42, 7, 100, 3, 250, 17, 64, 12, 8]])


def _types(model):
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (nn.Linear, Linear4bit, Linear8bitLt))}


@pytest.mark.parametrize("arch, kwargs", [
    ("llama", dict(load_in_4bit=True, bnb_4bit_use_double_quant=True)),
    ("qwen2", dict(load_in_4bit=True, bnb_4bit_use_double_quant=True)),  # q/k/v biases
    ("opt", dict(load_in_8bit=True)),  # biases everywhere, untied lm_head
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_type="fp4")),
    ("llama", dict(load_in_8bit=True)),
])
def test_lazy_load_equals_quantizing_the_float_model(tiny_dirs, arch, kwargs):
    folder = tiny_dirs(arch)
    lazy = lowbit.load(folder, **kwargs)
    cfg = BnbConfig.from_any(None, **kwargs).to_quant_config()
    eager, _ = load_float(folder)
    ref, float_bytes = eager(IDS).logits, lowbit.memory_footprint(eager)
    records = quantize_model_bnb(eager, cfg, progress=False)
    assert len(records) == len(lazy.quantization_records) > 0
    assert _types(lazy) == _types(eager)
    out = lazy(IDS).logits
    assert torch.equal(out, eager(IDS).logits)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < (0.05 if "load_in_8bit" in kwargs else 0.5)
    assert lowbit.memory_footprint(lazy) < 0.75 * float_bytes
    assert type(lazy.lm_head).__name__ == "Linear"  # output layer stays 16/32-bit
    assert lazy.tokenizer is not None


def test_skip_modules_stay_float_and_unmatched_names_warn(tiny_llama_dir, caplog):
    with caplog.at_level(logging.WARNING):
        m = lowbit.load(tiny_llama_dir, quantization_config=BnbConfig(
            load_in_4bit=True, llm_int8_skip_modules=["mlp.down_proj", "model.layers.0", "no_such_layer"]))
    types = _types(m)
    assert types["model.layers.1.mlp.down_proj"] == "Linear"
    assert all(t == "Linear" for n, t in types.items() if n.startswith("model.layers.0."))
    assert types["model.layers.1.self_attn.q_proj"] == "Linear4bit"
    warned = [r.getMessage() for r in caplog.records if "no_such_layer" in r.getMessage()]
    assert warned and "match no Linear layer" in warned[0] and "mlp.down_proj" not in warned[0]


def test_matches_dotted_runs():
    assert matches("model.layers.3.mlp.down_proj", "mlp.down_proj")
    assert matches("model.layers.3.mlp.down_proj", "layers.3")
    assert not matches("model.layers.13.mlp.down_proj", "layers.3")
    assert not matches("model.layers.3.mlp.down_proj_x", "down_proj")


def test_transformers_config_object_accepted_by_load(tiny_llama_dir):
    from transformers import BitsAndBytesConfig

    m = lowbit.load(tiny_llama_dir, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16))
    layer = m.model.layers[0].self_attn.q_proj
    assert isinstance(layer, Linear4bit) and layer.double_quant and layer.compute_dtype == torch.bfloat16
    assert m(IDS).logits.dtype == torch.float32  # float parts in fp32 on CPU; matmuls in bf16


def test_fp32_cpu_offload_placement(tiny_llama_dir, monkeypatch):
    """Placement with a (pretend) GPU: layers mapped to "cpu" stay unquantized fp32 there."""
    model, _ = load_float(tiny_llama_dir)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    bnb = BnbConfig(load_in_4bit=True, llm_int8_enable_fp32_cpu_offload=True)
    device_map = {"model.layers.1": "cpu", "lm_head": "cpu", "": 0}
    placement, fp32_keys, targets = plan(model, bnb, device_map)
    assert placement == {"model.layers.1": "cpu", "lm_head": "cpu", "": "cuda:0"}
    assert fp32_keys == {"model.layers.1", "lm_head"}
    assert targets and all(t.startswith("model.layers.0.") for t in targets)
    assert dm.device_of("model.layers.1.mlp.up_proj.weight", placement) == "cpu"
    assert dm.device_of("model.layers.0.mlp.up_proj.weight", placement) == "cuda:0"
    # without the flag the CPU layers are quantized too (and run on the CPU)
    _, _, targets = plan(model, BnbConfig(load_in_4bit=True), device_map)
    assert any(t.startswith("model.layers.1.") for t in targets)


def test_fp32_offloaded_block_runs_in_fp32_inside_a_bf16_model(tiny_llama_dir):
    """Execution side of offload (CPU only here): a block kept in fp32 receives fp32 inputs,
    hands bf16 on, and the model's output is close to the all-fp32 one."""
    bnb = BnbConfig(load_in_4bit=True, llm_int8_enable_fp32_cpu_offload=True)
    m = lowbit.load(tiny_llama_dir, quantization_config=bnb, device_map="cpu", dtype=torch.bfloat16)
    assert all(t == "Linear" for t in _types(m).values())  # everything on "cpu": all kept fp32
    assert m.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert m(IDS).logits.dtype == torch.float32

    m = lowbit.load(tiny_llama_dir, load_in_4bit=True, device_map="cpu", dtype=torch.bfloat16)
    block = m.model.layers[1]
    block.float()
    dm.attach_hooks(m, {"model.layers.1": "cpu", "": "cpu"}, {"model.layers.1"}, torch.bfloat16)
    seen = []
    block.mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype) and None)
    m.model.norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype) and None)
    logits = m(IDS).logits
    assert seen == [torch.float32, torch.bfloat16]  # inside the offloaded block fp32, after it bf16
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_device_map_errors(tiny_llama_dir):
    with pytest.raises(LowbitError, match="'model.layers.7', which is not a module"):
        lowbit.load(tiny_llama_dir, load_in_4bit=True, device_map={"model.layers.7": "cpu", "": "cpu"})
    with pytest.raises(LowbitError, match="does not place"):
        lowbit.load(tiny_llama_dir, load_in_4bit=True, device_map={"model.layers.0": "cpu"})
    with pytest.raises(LowbitError, match="disk"):
        lowbit.load(tiny_llama_dir, load_in_4bit=True, device_map={"": "disk"})
    if not torch.cuda.is_available():
        with pytest.raises(LowbitError, match="not available"):
            lowbit.load(tiny_llama_dir, load_in_4bit=True, device_map={"": "cuda:0"})
    with pytest.raises(LowbitError, match="device or device_map"):
        lowbit.load(tiny_llama_dir, device="cpu", device_map="cpu", load_in_4bit=True)


def test_auto_and_cpu_maps(tiny_llama_dir):
    m = lowbit.load(tiny_llama_dir, load_in_8bit=True, device_map="auto")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert m.hf_device_map == {"": expected}
    assert isinstance(m.model.layers[0].mlp.up_proj, Linear8bitLt)


def test_split_units_are_blocks_and_leaves(tiny_llama_dir):
    model, _ = load_float(tiny_llama_dir)
    units = dm.split_units(model)
    assert "model.layers.0" in units and "model.embed_tokens" in units and "lm_head" in units
    assert not any(u.startswith("model.layers.0.") for u in units)


@pytest.mark.parametrize("kwargs, message", [
    (dict(load_in_4bit=True, load_in_8bit=True), "both set"),
    (dict(load_in_4bit=True, bnb_4bit_quant_type="int3"), "unknown bnb_4bit_quant_type"),
    (dict(bnb_4bit_quant_type="nf4"), "neither load_in_4bit nor load_in_8bit"),
    (dict(load_in_4bit=True, bnb_4bit_compute_dtype="float64"), "not supported"),
    (dict(load_in_4bit=True, fancy=True), "unknown quantization option"),
])
def test_bad_quantization_arguments(tiny_llama_dir, kwargs, message):
    with pytest.raises(LowbitError, match=message):
        lowbit.load(tiny_llama_dir, **kwargs)


def test_already_quantized_checkpoint_is_refused(tmp_path, tiny_llama_dir):
    from lowbit.cli import main

    out = tmp_path / "q"
    assert main(["quantize", "--model-path", str(tiny_llama_dir), "--output-dir", str(out),
                 "--quantization-type", "nf4", "--quiet"]) == 0
    with pytest.raises(LowbitError, match="already quantized"):
        lowbit.load(out, load_in_4bit=True)


def test_compute_dtype_that_cannot_run_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert runnable_dtype(torch.float8_e4m3fn, "cpu") == torch.float32
    assert "cannot run matmuls" in caplog.text
    assert runnable_dtype(torch.bfloat16, "cpu") == torch.bfloat16


def test_truncated_checkpoint_is_a_clear_error(tiny_llama_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama_dir, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(LowbitError, match="corrupt or truncated"):
        lowbit.load(bad, load_in_4bit=True)
