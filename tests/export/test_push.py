"""`lowbit push`: the generated model card, the upload call (a local stand-in for HfApi, no network),
the token and offline errors."""
import json

import pytest
from huggingface_hub import CommitOperationAdd

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.export.card import model_card
from lowbit.export.hub import push


class FakeHfApi:
    """Records what lowbit asks of the hub; holds nothing but the calls."""

    calls: list = []

    def __init__(self, token=None, endpoint=None):
        FakeHfApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://hub.example/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, **kw):
        FakeHfApi.calls.append(("create_commit", {"repo_id": repo_id, "operations": list(operations),
                                                  "commit_message": commit_message, **kw}))

        class Info:
            commit_url = f"https://hub.example/{repo_id}/commit/abc"

        return Info()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llama_dir):
    """A GPTQ checkpoint made by the CLI (report included) plus an evaluation file."""
    out = tmp_path_factory.mktemp("push") / "tiny-gptq"
    assert main(["quantize", "--model-path", str(tiny_llama_dir), "--output-dir", str(out), "--quantization-type", "rtn",
                 "--bits", "4", "--group-size", "32", "--quiet"]) == 0
    (out / "lowbit_eval.json").write_text(json.dumps([
        {"model": "fp32", "dataset": "wikitext2", "perplexity": 21.3456, "size_mib": 0.4},
        {"model": "rtn w4 g32", "dataset": "wikitext2", "perplexity": 22.0101, "size_mib": 0.2},
    ]))
    return out


def test_model_card_records_method_bits_group_calibration_and_evaluation(checkpoint):
    card = model_card(checkpoint, "someone/tiny-gptq-w4g32")
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- lowbit\n- quantized\n- gptq\n- rtn\n- 4-bit\n---")
    assert "# tiny-gptq-w4g32" in card
    for row in ("| method | rtn |", "| format | gptq (gptq) |", "| bits | 4 |", "| group_size | 32 |", "| sym | True |"):
        assert row in card, row
    assert "None: rtn needs no calibration data." in card
    assert "| model | dataset | perplexity | size_mib |" in card
    assert "| rtn w4 g32 | wikitext2 | 22.01 | 0.2 |" in card
    assert "vllm serve someone/tiny-gptq-w4g32 --quantization gptq" in card


def test_model_card_names_the_calibration_data(checkpoint, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoint / "config.json").read_text())
    report = json.loads((checkpoint / "lowbit_report.json").read_text())
    report["quantization_config"]["method"] = "gptq"
    report["calibration"] = {"dataset": "wikitext2", "split": "train", "n_samples": 128, "seq_len": 2048, "seed": 0,
                             "text_column": None}
    report["source"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (folder / "lowbit_report.json").write_text(json.dumps(report))
    card = model_card(folder, "someone/x")
    assert "dataset: wikitext2, split: train, n_samples: 128, seq_len: 2048, seed: 0" in card
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "## Evaluation" not in card


def test_push_uploads_every_file_and_the_card_in_one_commit(checkpoint, monkeypatch, capsys):
    FakeHfApi.calls.clear()
    monkeypatch.setattr("lowbit.export.hub.HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["push", str(checkpoint), "someone/tiny-gptq", "--private", "-q"]) == 0
    assert "pushed" in capsys.readouterr().out
    (_, init), (_, repo), (_, commit) = FakeHfApi.calls
    assert init["token"] == "hf_test_token"
    assert repo == {"repo_id": "someone/tiny-gptq", "private": True, "exist_ok": True, "repo_type": "model"}
    ops = {op.path_in_repo: op for op in commit["operations"]}
    assert all(isinstance(op, CommitOperationAdd) for op in ops.values())
    files = {p.name for p in checkpoint.iterdir()}
    assert set(ops) == files | {"README.md"}
    assert "model.safetensors" in ops and "lowbit_report.json" in ops
    readme = ops["README.md"].path_or_fileobj
    readme = readme.read() if hasattr(readme, "read") else readme
    assert b"| group_size | 32 |" in readme


def test_readme_in_the_folder_is_kept(checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "mine"
    shutil.copytree(checkpoint, folder)
    (folder / "README.md").write_text("my card")
    FakeHfApi.calls.clear()
    push(folder, "someone/mine", api=FakeHfApi())
    ops = FakeHfApi.calls[-1][1]["operations"]
    assert [op.path_in_repo for op in ops].count("README.md") == 1


def test_no_token_is_one_clear_error(checkpoint, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", str(checkpoint), "someone/x"]) == 2
    assert capsys.readouterr().err.strip() == "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`"


def test_offline_is_one_clear_error(checkpoint, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    unreachable = HfApi(endpoint="http://127.0.0.1:9", token="hf_x")  # nothing listens on port 9
    with pytest.raises(LowbitError, match=r"^cannot reach the Hugging Face Hub \(.*\): check the network"):
        push(checkpoint, "someone/x", api=unreachable)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LowbitError, match="HF_HUB_OFFLINE is set"):
        push(checkpoint, "someone/x", api=FakeHfApi())


def test_push_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(LowbitError, match="not a model folder"):
        push(tmp_path, "someone/x", api=FakeHfApi())
