"""`lowbit quantize --quantization-type gptq|awq` end to end, and its bad input."""
import json

import pytest
import torch

import lowbit
from lowbit.cli import main

TEXT = "\n\n".join(f"Section {i}. Quantization maps weights to {i % 8 + 1} bits; def f{i}(x): return x * {i}"
                   for i in range(200))


# tiny tensors: see the one_thread fixture (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calib(tmp_path):
    f = tmp_path / "calib.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


def quantize(src, out, method, *extra):
    return main(["quantize", "--model-path", str(src), "--output-dir", str(out), "--quantization-type", method,
                 "--bits", "4", "--group-size", "32", "--quiet", *extra])


@pytest.mark.parametrize("method,extra", [("gptq", ["--desc-act"]), ("awq", [])])
def test_calibrated_quantization_end_to_end(tiny_llama_dir, tmp_path, calib, method, extra, capsys):
    out = tmp_path / method
    rc = quantize(tiny_llama_dir, out, method, "--dataset-name", str(calib), "--calibration-samples", "8",
                  "--max-seq-length", "32", "--seed", "1", "--device", "cpu", "--format", "lowbit", *extra)
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "lowbit_report.json").read_text())
    assert report["calibration"]["n_samples"] == 8 and report["calibration"]["seq_len"] == 32
    assert len(report["layers"]) == 14 and all(r["loss"] >= 0 and "block_seconds" in r for r in report["layers"])
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == method and qc["sym"] is (method == "gptq") and qc["desc_act"] is (method == "gptq")
    original = lowbit.load(tiny_llama_dir, device="cpu")
    model = lowbit.load(out, device="cpu")
    x = torch.randint(3, 300, (1, 24))
    with torch.no_grad():
        a, b = original(x).logits, model(x).logits
    assert (a - b).pow(2).mean() < 0.05 * a.pow(2).mean()


@pytest.mark.parametrize("args,message", [
    (["--dataset-name", "{tmp}/missing.txt"], "calibration file .*missing.txt not found"),
    (["--dataset-name", "{calib}", "--calibration-samples", "512", "--max-seq-length", "512"], "fewer than the 512 x 512"),
    (["--dataset-name", "{tmp}/empty.txt"], "is empty"),
])
def test_bad_calibration_input_fails_cleanly(tiny_llama_dir, tmp_path, calib, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "never"
    args = [a.format(tmp=tmp_path, calib=calib) for a in args]
    assert quantize(tiny_llama_dir, out, "gptq", "--calibration-samples", "4", "--max-seq-length", "16", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when there is no GPU")
def test_missing_cuda_device_fails_before_loading(tiny_llama_dir, tmp_path, calib, capsys):
    out = tmp_path / "never"
    assert quantize(tiny_llama_dir, out, "gptq", "--dataset-name", str(calib), "--device", "cuda") == 2
    assert "no CUDA device is available here; use --device cpu" in capsys.readouterr().err
    assert not out.exists()
