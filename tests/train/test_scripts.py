"""scripts/run_train.sh -> run_merge.sh -> run_quantize.sh chain the whole path.

Each script's command line is captured (LOWBIT=printf) and then run through the real CLI
in-process: the scripts' flags are checked by lowbit's own parser and the chain runs end
to end, without paying three fresh interpreter start-ups.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lowbit.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _argv(script: str, env: dict, *extra: str) -> list[str]:
    done = subprocess.run(["bash", f"scripts/{script}", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_scripts_chain_train_merge_quantize(tiny_llama_dir, tmp_path):
    recs = [{"prompt": f"Say {w}: ", "completion": w} for w in ("a", "b", "c", "d")]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    env = dict(os.environ, LOWBIT="printf %s\\n", MODEL_PATH=str(tiny_llama_dir), DATASET=str(tmp_path / "d.jsonl"),
               ADAPTER_DIR=str(tmp_path / "adapter"), MERGED_DIR=str(tmp_path / "merged"),
               QUANTIZED_DIR=str(tmp_path / "quantized"))
    train = _argv("run_train.sh", env, "--max-steps", "2", "--max-seq-length", "64", "--quiet")
    merge = _argv("run_merge.sh", env, "--quiet")
    quantize = _argv("run_quantize.sh", env, "--quantization-type", "rtn", "--group-size", "32", "--quiet")
    assert train[0] == "train" and merge[0] == "merge" and quantize[0] == "quantize"
    assert "--gradient-checkpointing" in train and train[train.index("--lora-r") + 1] == "16"
    for argv in (train, merge, quantize):
        assert main(argv) == 0, argv
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "quantized" / "config.json").read_text())["quantization_config"]["bits"] == 4
