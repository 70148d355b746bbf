"""`lowbit quantize`, `inspect` and `generate` run end to end; bad input fails clearly."""
import json
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit.cli import main


def _quantize(src, out, *extra):
    return main(["quantize", "--model-path", str(src), "--output-dir", str(out),
                 "--quantization-type", "rtn", "--format", "lowbit", "--quiet", *extra])


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_quantize_writes_a_complete_checkpoint(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert _quantize(tiny_llama_dir, out, "--bits", "4", "--group-size", "64") == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "lowbit_report.json", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "lowbit"
    assert config["quantization_config"]["group_size"] == 64
    report = json.loads((out / "lowbit_report.json").read_text())
    assert len(report["layers"]) == 2 * 7  # every Linear of both blocks, lm_head kept
    assert all(0 < r["rel_weight_error"] < 0.2 for r in report["layers"])
    assert "quantized 14 layers" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []


def test_quantized_model_stays_close_to_the_original(tiny_llama_dir, tmp_path):
    out = tmp_path / "q8"
    assert _quantize(tiny_llama_dir, out, "--bits", "8", "--group-size", "32") == 0
    original = lowbit.load(tiny_llama_dir, device="cpu")
    quantized = lowbit.load(out, device="cpu")
    x = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        a, b = original(x).logits, quantized(x).logits
    assert (a - b).abs().max() < 0.02 * a.abs().max()


def test_lm_head_is_quantized_only_when_asked(tiny_llama_dir, tmp_path):
    out = tmp_path / "qh"
    assert _quantize(tiny_llama_dir, out, "--quantize-lm-head") == 0
    model = lowbit.load(out, device="cpu")
    assert type(model.lm_head).__name__ == "QuantLinear"
    assert type(model.model.embed_tokens).__name__ == "Embedding"


def test_skip_modules_stay_in_float(tiny_llama_dir, tmp_path):
    out = tmp_path / "qs"
    assert _quantize(tiny_llama_dir, out, "--skip-modules", "mlp.down_proj") == 0
    model = lowbit.load(out, device="cpu")
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear"
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "QuantLinear"


def test_inspect_reports_method_bits_and_sizes(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    _quantize(tiny_llama_dir, out, "--bits", "3", "--group-size", "32")
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["architecture"], info["method"], info["bits"], info["group_size"]) == ("llama", "rtn", 3, 32)
    assert info["bytes_on_disk"] > 0 and info["memory_footprint"] > 0


def test_generate_prints_a_continuation(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    _quantize(tiny_llama_dir, out)
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "The quick", "--max-new-tokens", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("The quick")


def test_non_empty_output_is_refused_unless_overwrite(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _quantize(tiny_llama_dir, out) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert _quantize(tiny_llama_dir, out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_failure_while_writing_leaves_nothing_behind(tiny_llama_dir, tmp_path, monkeypatch):
    import lowbit.models.checkpoint as ckpt

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_tensors", broken)
    with pytest.raises(OSError):
        _quantize(tiny_llama_dir, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def _not_a_model(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def _gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(d)
    return d


@pytest.mark.parametrize(
    "make_src, extra, message",
    [
        (lambda t, tiny: t / "nope", [], "does not exist"),
        (lambda t, tiny: _not_a_model(t), [], "not a model folder"),
        (lambda t, tiny: _gpt2(t), [], "architecture 'gpt2' is not supported"),
        (lambda t, tiny: tiny, ["--bits", "5"], "--bits 5 is not supported"),
        (lambda t, tiny: tiny, ["--bits", "1"], "--bits 1 is not supported"),
        (lambda t, tiny: tiny, ["--group-size", "0"], "--group-size 0 is invalid"),
        (lambda t, tiny: tiny, ["--group-size", "-7"], "--group-size -7 is invalid"),
    ],
    ids=["missing-path", "not-a-model", "unsupported-arch", "bits-5", "bits-1", "group-0", "group-minus-7"],
)
def test_bad_input_is_one_clear_line_and_no_output(make_src, extra, message, tiny_llama_dir, tmp_path, capsys):
    src = make_src(tmp_path, tiny_llama_dir)
    capsys.readouterr()
    out = tmp_path / "out"
    assert _quantize(src, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_method_not_in_this_build_says_so(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    from lowbit import algorithms

    monkeypatch.delitem(algorithms.ALGORITHMS, "rtn")
    assert _quantize(tiny_llama_dir, tmp_path / "o") == 2
    assert "'rtn' is not implemented in this version" in capsys.readouterr().err


def test_cli_exits_non_zero_as_a_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lowbit", "quantize", "--model-path", str(tmp_path / "x"),
                           "--output-dir", str(tmp_path / "o"), "--quantization-type", "rtn"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: model path {tmp_path / 'x'} does not exist: "
                                                "pass a model folder, a .gguf file, a hub id or 'demo'"]


def test_dtype_sets_the_float_parts_and_keeps_quantized_buffers(tiny_llama_dir, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "q16"
    assert _quantize(tiny_llama_dir, out, "--dtype", "bfloat16") == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.up_proj.scales").dtype == torch.float16
        assert f.get_tensor("model.layers.0.mlp.up_proj.qweight").dtype == torch.int32
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_16bit_checkpoint_loads_in_the_asked_dtype(tiny_llama_dir, tmp_path):
    out = tmp_path / "q16"
    assert _quantize(tiny_llama_dir, out, "--dtype", "float16") == 0
    model = lowbit.load(out, device="cpu", dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 300, (1, 8))).logits).all()
