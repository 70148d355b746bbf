"""`lowbit quantize --format` and `lowbit export` through the CLI: default formats per method, a chain
through every format back to lowbit bit for bit, and bad input as one clear line with nothing written."""
import json

import pytest
import torch
from exporthelp import quant_layers, read_config, tokens

import lowbit
from lowbit.cli import main


def _quantize(src, out, *extra):
    return main(["quantize", "--model-path", str(src), "--output-dir", str(out), "--quiet", *extra])


def _export(src, out, fmt, *extra):
    return main(["export", str(src), "--format", fmt, "--output-dir", str(out), "--quiet", *extra])


@pytest.mark.parametrize("method, extra, quant_method", [
    ("rtn", [], "gptq"),
    ("rtn", ["--format", "compressed-tensors"], "compressed-tensors"),
    ("nf4", [], "lowbit"),
], ids=["rtn-default-gptq", "rtn-compressed-tensors", "nf4-default-lowbit"])
def test_quantize_writes_the_format_of_its_method(tiny_llama_dir, tmp_path, method, extra, quant_method):
    out = tmp_path / "q"
    assert _quantize(tiny_llama_dir, out, "--quantization-type", method, "--group-size", "32", *extra) == 0
    assert read_config(out)["quantization_config"]["quant_method"] == quant_method
    report = json.loads((out / "lowbit_report.json").read_text())
    assert report["quantization_config"]["format"] == quant_method
    model = lowbit.load(out, device="cpu")
    assert model.quant_config.method == method
    if quant_method != "lowbit":
        assert type(model.model.layers[1].mlp.down_proj).__name__ == "QuantLinear"


def test_a_chain_through_every_format_comes_back_bit_exact(tiny_llama_dir, tmp_path):
    start = tmp_path / "lowbit"
    assert _quantize(tiny_llama_dir, start, "--quantization-type", "rtn", "--bits", "4", "--group-size", "32",
                     "--no-sym", "--format", "lowbit") == 0
    chain = ["gptq", "awq", "compressed-tensors", "gptq", "lowbit"]
    src = start
    for i, fmt in enumerate(chain):
        out = tmp_path / f"{i}-{fmt}"
        assert _export(src, out, fmt) == 0, fmt
        assert read_config(out)["quantization_config"]["quant_method"] == fmt
        src = out
    report = json.loads((src / "lowbit_report.json").read_text())
    assert report["export"]["source_format"] == "gptq" and report["quantization_config"]["method"] == "rtn"
    first, last = lowbit.load(start, device="cpu"), lowbit.load(src, device="cpu")
    for name, layer in quant_layers(first).items():
        for buf in ("qweight", "qzeros", "scales", "g_idx"):
            assert torch.equal(getattr(last.get_submodule(name), buf), getattr(layer, buf)), (name, buf)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(first(x).logits, last(x).logits)


def _nf4(tmp, tiny):
    out = tmp / "nf4"
    assert _quantize(tiny, out, "--quantization-type", "nf4") == 0
    return out


def _gptq(tmp, tiny):
    out = tmp / "g"
    assert _quantize(tiny, out, "--quantization-type", "rtn", "--group-size", "32") == 0
    return out


def _non_empty(tmp):
    out = tmp / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    return out


@pytest.mark.parametrize("make_src, fmt, make_out, message", [
    (lambda t, tiny: tiny, "gptq", None, "is not quantized: run `lowbit quantize"),
    (_nf4, "awq", None, "is a Linear4bit: the awq format holds group-wise integer weights"),
    (_gptq, "gptq", _non_empty, "is not empty"),
    (lambda t, tiny: t / "missing", "gptq", None, "does not exist"),
], ids=["float-source", "nf4-to-awq", "non-empty-output", "missing"])
def test_export_bad_input_is_one_clear_line_and_nothing_written(tiny_llama_dir, tmp_path, capsys, make_src, fmt,
                                                                make_out, message):
    src = make_src(tmp_path, tiny_llama_dir)
    out = make_out(tmp_path) if make_out else tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert _export(src, out, fmt) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not out.exists() or [p.name for p in out.iterdir()] == ["keep.txt"]


def test_quantize_refuses_an_integer_format_for_nf4(tiny_llama_dir, tmp_path, capsys):
    assert _quantize(tiny_llama_dir, tmp_path / "q", "--quantization-type", "nf4", "--format", "gptq") == 2
    assert "nf4 checkpoints are written with --format lowbit" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
