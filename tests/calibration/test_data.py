"""Calibration data: files, built-ins, chat rendering, seeded windows, clear errors."""
import json

import pytest
import torch
import tiny

from lowbit.calibration import data
from lowbit.config import CalibrationConfig
from lowbit.errors import LowbitError

TEXT = "\n\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over {i * 7} lazy dogs." for i in range(300))


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_txt_windows_are_seeded_distinct_pieces_of_the_stream(tok, tmp_path):
    f = write(tmp_path / "c.txt", TEXT)
    ids = data.load(tok, CalibrationConfig(dataset=f, n_samples=8, seq_len=32, seed=0))
    assert ids.shape == (8, 32) and ids.dtype == torch.long
    assert torch.equal(ids, data.load(tok, CalibrationConfig(dataset=f, n_samples=8, seq_len=32, seed=0)))
    assert not torch.equal(ids, data.load(tok, CalibrationConfig(dataset=f, n_samples=8, seq_len=32, seed=1)))
    stream = data.token_stream(tok, [TEXT]).tolist()
    starts = []
    for row in ids.tolist():
        hits = [s for s in range(len(stream) - 31) if stream[s:s + 32] == row]
        assert hits, "a window is not a piece of the token stream"
        starts.append(hits[0])
    starts.sort()
    assert all(b - a >= 32 for a, b in zip(starts, starts[1:]))  # no overlap


def test_too_little_text_names_the_numbers_and_the_fix(tok, tmp_path):
    f = write(tmp_path / "short.txt", "only a few words here")
    with pytest.raises(LowbitError, match=r"fewer than the 4 x 64 = 256 needed.*--calibration-samples.*--max-seq-length"):
        data.load(tok, CalibrationConfig(dataset=f, n_samples=4, seq_len=64))


def test_empty_missing_and_unsupported_files(tok, tmp_path):
    with pytest.raises(LowbitError, match="is empty"):
        data.load(tok, CalibrationConfig(dataset=write(tmp_path / "e.txt", ""), n_samples=1, seq_len=8))
    with pytest.raises(LowbitError, match="not found"):
        data.load(tok, CalibrationConfig(dataset=str(tmp_path / "missing.jsonl"), n_samples=1, seq_len=8))
    with pytest.raises(LowbitError, match="unsupported type '.csv'"):
        data.load(tok, CalibrationConfig(dataset=write(tmp_path / "d.csv", "a,b\n1,2"), n_samples=1, seq_len=8))
    with pytest.raises(LowbitError, match=r"bad.jsonl:2: not valid JSON"):
        data.load(tok, CalibrationConfig(dataset=write(tmp_path / "bad.jsonl", '{"text": "a"}\n{oops\n'),
                                         n_samples=1, seq_len=8))


def test_jsonl_text_column_and_guessing(tok, tmp_path):
    rows = [{"id": i, "body": f"document {i} " * 20} for i in range(50)]
    f = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    ids = data.load(tok, CalibrationConfig(dataset=f, n_samples=4, seq_len=16, text_column="body"))
    assert ids.shape == (4, 16)
    with pytest.raises(LowbitError, match="--text-column"):
        data.load(tok, CalibrationConfig(dataset=f, n_samples=4, seq_len=16))
    with pytest.raises(LowbitError, match="no column 'nope'"):
        data.load(tok, CalibrationConfig(dataset=f, n_samples=4, seq_len=16, text_column="nope"))


def test_chat_and_instruction_records_use_the_chat_template(tok):
    tok = tiny.tokenizer()
    tok.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert data.record_text(chat, None, tok) == "<|user|>hi\n<|assistant|>hello\n"
    alpaca = {"instruction": "Add", "input": "1 and 2", "output": "3"}
    assert data.record_text(alpaca, None, tok) == "<|user|>Add\n\n1 and 2\n<|assistant|>3\n"
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert data.record_text(sharegpt, None, tok) == "<|user|>q\n<|assistant|>a\n"
    plain = tiny.tokenizer()  # no chat template: the turns joined by blank lines
    assert data.record_text({"question": "Why?", "answer": "Because."}, None, plain) == "Why?\n\nBecause."


def test_parquet(tok, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": [f"row {i} " * 30 for i in range(40)]}), tmp_path / "d.parquet")
    assert data.load(tok, CalibrationConfig(dataset=str(tmp_path / "d.parquet"), n_samples=3, seq_len=24)).shape == (3, 24)


def test_pydocs_builtin_is_offline(tok):
    ids = data.load(tok, CalibrationConfig(dataset="pydocs", n_samples=4, seq_len=128, seed=3))
    assert ids.shape == (4, 128)


def test_hub_names_offline_fail_naming_the_offline_choices(tok, monkeypatch):
    try:
        import huggingface_hub
        import datasets

        # both read HF_HUB_OFFLINE at import: patch the constants so no request is attempted
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass  # without `datasets` the error must name the offline choices too
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    for name in ("wikitext2", "no-such-owner/no-such-dataset"):
        with pytest.raises(LowbitError, match="pydocs") as e:
            data.load(tok, CalibrationConfig(dataset=name, n_samples=2, seq_len=16))
        assert "\n" not in str(e.value)


def test_wikitext2_from_the_data_dir(tok, wikitext_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(wikitext_dir))
    ids = data.load(tok, CalibrationConfig(dataset="wikitext2", split="validation", n_samples=2, seq_len=64))
    assert ids.shape == (2, 64)


def test_large_datasets_are_read_only_as_far_as_needed():
    records = [f"doc {i} " * 10 for i in range(10_000)]
    chosen = data.select_records(records, n_chars=2_000, seed=0)
    assert 20 <= len(chosen) <= 40
    assert chosen == data.select_records(records, n_chars=2_000, seed=0)
    assert data.select_records(records[:10], n_chars=2_000, seed=0) == records[:10]
