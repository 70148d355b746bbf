"""`lowbit quantize --quantization-type nf4|fp4|int8` round trip; `lowbit inspect` memory report."""
import json

import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.nn import Linear4bit, Linear8bitLt

IDS = torch.tensor([[1, 5, 9, 42, 7, 100, 3, 250, 17, 64]])


def _quantize(src, out, qtype, *extra):
    return main(["quantize", "--model-path", str(src), "--output-dir", str(out), "--quantization-type", qtype,
                 "--quiet", *extra])


@pytest.mark.parametrize("qtype, extra, load_kwargs, cls", [
    ("nf4", [], dict(load_in_4bit=True, bnb_4bit_use_double_quant=True), Linear4bit),
    ("fp4", ["--no-double-quant", "--compute-dtype", "bfloat16"],
     dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="bfloat16"), Linear4bit),
    ("int8", ["--llm-int8-threshold", "4.0"], dict(load_in_8bit=True, llm_int8_threshold=4.0), Linear8bitLt),
    ("int8", ["--int8-act-block-size", "0"], dict(load_in_8bit=True, llm_int8_act_block_size=0), Linear8bitLt),
])
def test_save_load_gives_identical_logits(tiny_dirs, tmp_path, capsys, qtype, extra, load_kwargs, cls):
    src = tiny_dirs("qwen2")  # q/k/v with biases
    out = tmp_path / qtype
    assert _quantize(src, out, qtype, *extra) == 0
    assert "quantized 14 layers" in capsys.readouterr().out
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == qtype and qc["bits"] == (8 if qtype == "int8" else 4)
    saved = lowbit.load(out, device="cpu")
    on_the_fly = lowbit.load(src, **load_kwargs)
    layer = saved.model.layers[0].self_attn.q_proj
    assert isinstance(layer, cls) and layer.bias is not None
    assert saved.quant_config.method == qtype
    if cls is Linear8bitLt:  # the activation block size travels in config.json
        assert layer.act_block_size == saved.quant_config.int8_act_block_size == load_kwargs.get(
            "llm_int8_act_block_size", 64)
    assert torch.equal(saved(IDS).logits, on_the_fly(IDS).logits)
    for (n1, t1), (n2, t2) in zip(sorted(saved.state_dict().items()), sorted(on_the_fly.state_dict().items())):
        assert n1 == n2 and t1.dtype == t2.dtype and torch.equal(t1, t2)


def test_skip_modules_flag(tiny_llama_dir, tmp_path):
    out = tmp_path / "skip"
    assert _quantize(tiny_llama_dir, out, "nf4", "--skip-modules", "mlp.down_proj") == 0
    m = lowbit.load(out, device="cpu")
    assert type(m.model.layers[1].mlp.down_proj).__name__ == "Linear"
    assert isinstance(m.model.layers[1].mlp.up_proj, Linear4bit)


def test_inspect_reports_bits_and_layers(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert _quantize(tiny_llama_dir, out, "nf4") == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json", "--by-layer", "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "nf4" and info["blocksize"] == 64 and info["double_quant"] is True
    assert info["group_size"] is None
    assert 4.12 < info["bits_per_quantized_weight"] < 4.2  # nf4 + double quant, measured on the buffers
    rows = {r["layer"]: r for r in info["layers"]}
    q = rows["model.layers.0.self_attn.q_proj"]
    assert q["type"] == "Linear4bit" and q["weights"] == 96 * 96
    assert sum(r["bytes"] for r in info["layers"]) == info["memory_footprint"]


def test_inspect_formats_table(tiny_llama_dir, capsys):
    assert main(["inspect", str(tiny_llama_dir), "--formats", "--json", "--quiet"]) == 0
    rows = {r["format"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == ["fp32", "fp16", "int8", "nf4", "nf4+dq"]
    mem = {k: r["memory_bytes"] for k, r in rows.items()}
    assert mem["fp16"] == pytest.approx(mem["fp32"] / 2, rel=1e-3)  # rotary inv_freq stays fp32
    assert mem["fp16"] > mem["int8"] > mem["nf4"] > mem["nf4+dq"]
    assert rows["nf4"]["bits_per_quantized_weight"] == 4.5
    assert rows["nf4+dq"]["bits_per_quantized_weight"] < 4.2


@pytest.mark.parametrize("extra, message", [
    (["--blocksize", "63"], "blocksize 63"),
    (["--llm-int8-threshold", "-2"], "threshold -2.0"),
    (["--int8-act-block-size", "-1"], "block size -1 is invalid"),
])
def test_bad_flags_fail_with_one_line(tiny_llama_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert _quantize(tiny_llama_dir, out, "nf4", *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
