"""lowbit eval / bench / compare, run through the CLI on a tiny model."""
import json
import sys

import pytest

import lowbit
import lowbit.quantize
from lowbit.cli import main
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.evaluate import perplexity

TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog, def f(x): return x * {i}."
                   for i in range(40))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A small corpus (a few windows of the tiny tokenizer): pydocs would take long to tokenize."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return str(path)


EVAL = ["--seq-len", "64", "--max-windows", "3", "-q", "--device", "cpu"]  # the API side runs on CPU too


def test_eval_json_matches_api(tiny_llama_dir, text_file, capsys):
    assert main(["eval", str(tiny_llama_dir), "--dataset", text_file, *EVAL, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model = lowbit.load(tiny_llama_dir, device="cpu")
    api = perplexity(model, model.tokenizer, TEXT, seq_len=64, max_windows=3, progress=False)
    assert (out["windows"], out["seq_len"], out["tokens"]) == (3, 64, 3 * 63)
    assert out["perplexity"] == pytest.approx(api.perplexity, rel=1e-9)
    assert main(["eval", str(tiny_llama_dir), "--dataset", text_file, *EVAL, "--stride", "32"]) == 0
    assert "stride 32" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--seq-len", "4096"], "above the model's maximum of 256 positions"),
    (["--dataset", "SHORT"], "fewer than one window"),
    (["--tasks", "hellaswag"], "lm-evaluation-harness"),
])
def test_eval_bad_input(tiny_llama_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    (tmp_path / "short.txt").write_text("only a few words")
    extra = [str(tmp_path / "short.txt") if e == "SHORT" else e for e in extra]
    assert main(["eval", str(tiny_llama_dir), "--dataset", "pydocs", "--seq-len", "64", "-q", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_eval_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["eval", str(tmp_path), "-q"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_bench_json(tiny_llama_dir, capsys):
    assert main(["bench", str(tiny_llama_dir), "--batch-sizes", "1,2", "--prompt-len", "8", "--new-tokens", "3",
                 "--repeats", "2", "--json", "-q"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["batch_size"] for r in results] == [1, 2]
    assert all(r["decode_tok_s"]["min"] <= r["decode_tok_s"]["median"] <= r["decode_tok_s"]["max"] for r in results)
    assert main(["bench", str(tiny_llama_dir), "--batch-sizes", "x", "-q"]) == 2
    assert main(["bench", str(tiny_llama_dir), "--batch-sizes", "1", "--prompt-len", "8", "--new-tokens", "3",
                 "--repeats", "1", "--json", "-q", "--static-decode"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["decoder"] == "static"


@pytest.fixture
def awq_missing(monkeypatch):
    """This build as if 'awq' were not implemented (whatever the real state of the tree)."""
    real = lowbit.quantize.quantize

    def quantize(model_path, output_dir, cfg, *a, **k):
        if cfg.method == "awq":
            raise LowbitError("quantization type 'awq' is not implemented in this version of lowbit")
        return real(model_path, output_dir, cfg, *a, **k)

    monkeypatch.setattr(lowbit.quantize, "quantize", quantize)


COMPARE = ["--seq-len", "64", "--max-windows", "3", "--group-size", "32",
           "--prompt-len", "8", "--new-tokens", "3", "--repeats", "2", "-q", "--device", "cpu"]


def test_compare_writes_report(tiny_llama_dir, text_file, tmp_path, capsys, awq_missing):
    out = tmp_path / "report"
    assert main(["compare", str(tiny_llama_dir), "--methods", "fp16,rtn,awq", "--output-dir", str(out), *COMPARE,
                 "--dataset", text_file]) == 0
    printed = capsys.readouterr().out
    assert "| fp16" in printed and "| rtn" in printed and "not run: awq" in printed
    report = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["fp16", "rtn"] and [s["label"] for s in report["skipped"]] == ["awq"]
    assert "not implemented" in report["skipped"][0]["reason"]
    # the rows are what the plain API gives for the same model and windows
    base = lowbit.load(tiny_llama_dir, device="cpu")
    ppl = perplexity(base, base.tokenizer, TEXT, seq_len=64, max_windows=3, progress=False).perplexity
    assert rows["fp16"]["perplexity"] == pytest.approx(ppl, rel=1e-9)
    lowbit.quantize.quantize(tiny_llama_dir, tmp_path / "rtn", QuantConfig(method="rtn", bits=4, group_size=32),
                             progress=False)
    q = lowbit.load(tmp_path / "rtn", device="cpu")
    qppl = perplexity(q, q.tokenizer, TEXT, seq_len=64, max_windows=3, progress=False).perplexity
    assert rows["rtn"]["perplexity"] == pytest.approx(qppl, rel=1e-9) and qppl != ppl
    assert rows["rtn"]["quality_pct"] == pytest.approx(100 * ppl / qppl)
    assert rows["rtn"]["weight_bytes"] < rows["fp16"]["weight_bytes"] and rows["fp16"]["size_ratio"] == 1.0
    assert rows["fp16"]["speedup_decode"] == 1.0 and len(rows["rtn"]["bench"]["decode_tok_s"]["runs"]) == 2
    md = (out / "report.md").read_text()
    assert "| method" in md and "awq" in md.split("## Not run")[1]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing checkpoint folder is an accepted method, labelled by its name
    out2 = tmp_path / "report2"
    assert main(["compare", str(tiny_llama_dir), "--methods", f"fp16,{tmp_path / 'rtn'}", "--output-dir", str(out2),
                 *COMPARE, "--dataset", text_file]) == 0
    rows2 = json.loads((out2 / "report.json").read_text())["rows"]
    assert rows2[1]["label"] == "rtn" and rows2[1]["perplexity"] == pytest.approx(qppl, rel=1e-9)


def test_compare_bad_input(tiny_llama_dir, text_file, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["compare", str(tiny_llama_dir), "--methods", "fp16,rtn", "--output-dir", str(tmp_path / "file" / "out"),
                 *COMPARE, "--dataset", text_file]) == 2
    assert "cannot write the report" in capsys.readouterr().err
    (tmp_path / "short.txt").write_text("only a few words")
    out = tmp_path / "never"
    assert main(["compare", str(tiny_llama_dir), "--methods", "fp16,rtn", "--output-dir", str(out), *COMPARE,
                 "--dataset", str(tmp_path / "short.txt")]) == 2
    assert "fewer than one window" in capsys.readouterr().err and not out.exists()
    assert main(["compare", str(tiny_llama_dir), "--methods", "fp16,bogus", "--output-dir", str(out), *COMPARE]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["compare", str(tiny_llama_dir), "--output-dir", str(out), *COMPARE, "--seq-len", "1000"]) == 2
    assert "above the model's maximum" in capsys.readouterr().err
