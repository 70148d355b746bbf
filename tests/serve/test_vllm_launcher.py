"""`lowbit serve --engine vllm` and scripts/run_vllm_server.sh: the exact vLLM command per format."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.serve import vllm
from lowbit.serve.vllm import quantization_for, vllm_command

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run_vllm_server.sh"

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@pytest.mark.parametrize("qc, marlin_ok, expected", [
    (GPTQ, True, "gptq_marlin"),
    (GPTQ, False, "gptq"),  # GPU older than Ampere: Marlin would fail
    ({**GPTQ, "sym": False}, True, "gptq"),  # Marlin's GPTQ path is symmetric only
    ({**GPTQ, "bits": 3}, True, "gptq"),
    ({**GPTQ, "group_size": 96}, True, "gptq"),
    ({**GPTQ, "bits": 8, "group_size": -1, "desc_act": True}, True, "gptq_marlin"),
    (AWQ, True, "awq_marlin"),
    (AWQ, False, "awq"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized"}, True, "compressed-tensors"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, True, "bitsandbytes"),
])
def test_quantization_method_per_format(qc, marlin_ok, expected):
    assert quantization_for({"quantization_config": qc}, marlin_ok) == expected


def test_unservable_formats_say_what_to_do():
    assert quantization_for({"model_type": "llama"}) is None
    with pytest.raises(LowbitError, match=r"lowbit export MODEL --format gptq"):
        quantization_for({"quantization_config": {"quant_method": "lowbit", "format_version": 1}})
    with pytest.raises(LowbitError, match="GEMM layout"):
        quantization_for({"quantization_config": {**AWQ, "version": "gemv"}})
    with pytest.raises(LowbitError, match="quant_method 'hqq'"):
        quantization_for({"quantization_config": {"quant_method": "hqq"}})


@pytest.fixture()
def gptq_dir(tiny_llama_dir, tmp_path):
    """The tiny model's folder with a GPTQ quantization_config (only config.json is read)."""
    folder = tmp_path / "gptq"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = GPTQ
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_exact_command(gptq_dir, tiny_llama_dir):
    cmd = vllm_command(str(gptq_dir), host="0.0.0.0", port=8001, api_key="k", max_model_len=4096,
                       tensor_parallel_size=2, max_batch_size=32, served_model_name="m", marlin_ok=True)
    assert cmd == ["vllm", "serve", str(gptq_dir.resolve()), "--host", "0.0.0.0", "--port", "8001",
                   "--quantization", "gptq_marlin", "--tensor-parallel-size", "2", "--max-model-len", "4096",
                   "--max-num-seqs", "32", "--served-model-name", "m", "--api-key", "k"]
    assert vllm_command(str(tiny_llama_dir)) == ["vllm", "serve", str(tiny_llama_dir.resolve()), "--host",
                                                 "127.0.0.1", "--port", "8000"]  # float model: no --quantization


def test_cli_prints_the_command_when_vllm_is_missing(gptq_dir, monkeypatch, capsys):
    monkeypatch.setattr(vllm, "vllm_installed", lambda: False)
    monkeypatch.setattr(vllm, "marlin_supported", lambda: True)
    assert main(["serve", str(gptq_dir), "--engine", "vllm", "--tensor-parallel-size", "2",
                 "--vllm-args", "--gpu-memory-utilization 0.9"]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == (f"vllm serve {gptq_dir.resolve()} --host 127.0.0.1 --port 8000 --quantization gptq_marlin "
                           "--tensor-parallel-size 2 --gpu-memory-utilization 0.9")
    assert "vLLM is not installed here, so the command above was not run" in err


def test_cli_runs_vllm_when_installed(gptq_dir, monkeypatch):
    ran = []
    monkeypatch.setattr(vllm, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm.shutil, "which", lambda name: "/usr/bin/vllm")
    monkeypatch.setattr(vllm.subprocess, "call", lambda cmd: ran.append(cmd) or 0)
    monkeypatch.setattr(vllm, "marlin_supported", lambda: False)
    assert main(["serve", str(gptq_dir), "--engine", "vllm", "--port", "9000", "--quiet"]) == 0
    assert ran == [["vllm", "serve", str(gptq_dir.resolve()), "--host", "127.0.0.1", "--port", "9000",
                    "--quantization", "gptq"]]


def test_cli_refuses_lowbit_layout_and_bad_flags(tiny_llama_dir, tmp_path, capsys):
    q = tmp_path / "q"
    assert main(["quantize", "--model-path", str(tiny_llama_dir), "--output-dir", str(q), "--quantization-type",
                 "rtn", "--format", "lowbit", "--quiet"]) == 0
    assert main(["serve", str(q), "--engine", "vllm"]) == 2
    assert "vLLM cannot load lowbit's own checkpoint layout" in capsys.readouterr().err
    assert main(["serve", str(q), "--tensor-parallel-size", "2"]) == 2
    assert "--tensor-parallel-size needs --engine vllm" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_vllm_server_script(gptq_dir):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(SCRIPT), "--model-path", str(gptq_dir), "--port", "8002", "--max-num-seqs", "64",
                        "--gpu-memory-utilization", "0.85", "--", "--enforce-eager"],
                       capture_output=True, text=True, env=env, timeout=120)
    if shutil.which("vllm", path=env["PATH"]):
        pytest.skip("vLLM is installed here: the script would start it")
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith(f"vllm serve {gptq_dir.resolve()} --host 127.0.0.1 --port 8002 --quantization gptq")
    assert r.stdout.strip().endswith("--max-num-seqs 64 --gpu-memory-utilization 0.85 --enforce-eager")
    assert "vLLM is not installed" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "unknown flag --bogus" in r.stderr
