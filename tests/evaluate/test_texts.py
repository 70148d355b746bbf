"""Evaluation texts: WikiText-2 rows, pydocs, files, offline errors."""
import json
import sys
import types

import pytest

from lowbit.errors import LowbitError
from lowbit.evaluate.texts import load_text, wikitext_rows


def test_wikitext_rows_follow_the_hub_loader():
    raw = " \n = Title = \n \n Body text .\n"
    assert wikitext_rows(raw) == ["", " = Title = \n", "", " Body text .\n"]


def test_local_wikitext(tmp_path, monkeypatch):
    (tmp_path / "wikitext-2-test.txt").write_text(" \n = A = \n \n b c .\n")
    expected = "\n\n".join(["", " = A = \n", "", " b c .\n"])
    assert load_text("wikitext2", data_dir=tmp_path) == expected
    assert load_text(tmp_path / "wikitext-2-test.txt") == expected  # the file itself
    assert load_text(str(tmp_path)) == expected  # a folder holding it
    monkeypatch.setenv("LOWBIT_DATA_DIR", str(tmp_path))
    assert load_text("wikitext2") == expected
    with pytest.raises(LowbitError, match="no wikitext-2-valid.txt"):
        load_text("wikitext2", split="valid", data_dir=tmp_path)


def test_shared_wikitext(wikitext_dir):
    text = load_text("wikitext2", data_dir=wikitext_dir)
    assert text.startswith("\n\n = Robert <unk> = \n") and len(text) > 1_000_000


def test_hub_offline_is_a_clear_error(monkeypatch):
    def fail(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.delenv("LOWBIT_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fail))
    with pytest.raises(LowbitError, match="--data-dir"):
        load_text("wikitext2")


def test_pydocs_and_files(tmp_path):
    text = load_text("pydocs")
    assert len(text) > 300_000 and "\n\n" in text
    (tmp_path / "a.txt").write_text("plain text")
    assert load_text(tmp_path / "a.txt") == "plain text"
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_text(str(tmp_path / "b.jsonl")) == "one\n\ntwo"
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(LowbitError, match="bad.jsonl:1"):
        load_text(tmp_path / "bad.jsonl")
    with pytest.raises(LowbitError, match="neither"):
        load_text(tmp_path / "missing.txt")
