"""Fine-tuning data: record formats, response-only labels, bad records, file types."""
import json

import pytest
import tiny

from lowbit.errors import LowbitError
from lowbit.train import data
from lowbit.train.data import IGNORE_INDEX

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    t = tiny.tokenizer()
    t.chat_template = CHAT_TEMPLATE
    return t


def _trained_text(tok, ex):
    return tok.decode([i for i, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("record, fmt, response", [
    ({"instruction": "Double it.", "context": "x = 2", "response": "x * 2"}, "instruction", "x * 2"),
    ({"instruction": "Double it.", "response": "x * 2"}, "instruction", "x * 2"),
    ({"instruction": "Double it.", "input": "", "output": "x * 2"}, "instruction", "x * 2"),  # Alpaca names
    ({"prompt": "def f(x):\n", "completion": "    return x * 2"}, "prompt-completion", "    return x * 2"),
])
def test_loss_only_on_response_and_eos(tok, record, fmt, response):
    assert data.detect_format(record) == fmt
    (ex,) = data.tokenize([record], tok, max_seq_length=256)
    assert len(ex.input_ids) == len(ex.labels)
    # Trained tokens = the response followed by eos, nothing of the prompt.
    assert _trained_text(tok, ex) == response + tok.eos_token
    prompt_len = ex.labels.index(next(lab for lab in ex.labels if lab != IGNORE_INDEX))
    assert tok.decode(ex.input_ids[:prompt_len]).strip()  # the prompt is in the input
    assert ex.input_ids[-1] == tok.eos_token_id


def test_context_appears_in_prompt_only_when_present(tok):
    with_ctx = data.segments({"instruction": "I", "context": "C", "response": "R"}, "instruction", tok)
    without = data.segments({"instruction": "I", "context": "", "response": "R"}, "instruction", tok)
    assert "### Context:\nC" in with_ctx[0][0] and "Context" not in without[0][0]


def test_train_on_prompt_labels_everything(tok):
    (ex,) = data.tokenize([{"prompt": "abc ", "completion": "def"}], tok, 256, train_on_prompt=True)
    assert ex.labels == ex.input_ids


def test_chat_trains_on_assistant_turns_only(tok):
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                        {"role": "assistant", "content": "ciao"}]}
    (ex,) = data.tokenize([rec], tok, 512)
    full = tok.apply_chat_template(rec["messages"], tokenize=False)
    assert tok.decode(ex.input_ids) == full
    assert _trained_text(tok, ex) == "hello</s>\nciao</s>\n"


def test_chat_without_template_is_refused():
    with pytest.raises(LowbitError, match="no chat template"):
        data.tokenize([{"messages": [{"role": "assistant", "content": "x"}]}], tiny.tokenizer(), 64)


@pytest.mark.parametrize("record, missing", [
    ({"instruction": "Do it.", "context": ""}, "'response'"),
    ({"prompt": "p"}, "'completion'"),
    ({"question": "q", "answer": "a"}, "expected fields"),
])
def test_missing_field_is_named_with_the_record(record, missing):
    with pytest.raises(LowbitError, match=missing) as e:
        data.detect_format(record)
    assert json.dumps(record)[:20] in str(e.value)  # the record is shown


def test_later_bad_record_is_caught_with_its_index(tok):
    recs = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 3}, {"prompt": "a"}]
    with pytest.raises(LowbitError, match="record 1: field 'completion' must be a string"):
        data.tokenize(recs, tok, 64)
    with pytest.raises(LowbitError, match="record 2 has no 'completion'"):
        data.tokenize([recs[0], recs[0], recs[2]], tok, 64, fmt="prompt-completion")


def test_truncation_keeps_records_with_targets_and_drops_the_rest(tok, caplog):
    long_prompt = {"prompt": "word " * 200, "completion": "end"}
    short = {"prompt": "a ", "completion": "b c d e f"}
    out = data.tokenize([long_prompt, short], tok, max_seq_length=8)
    assert len(out) == 1 and len(out[0].input_ids) <= 8
    with pytest.raises(LowbitError, match="raise it"):
        data.tokenize([long_prompt], tok, max_seq_length=8)


def test_collate_pads_right_and_masks():
    a, b = data.Example([1, 2, 3], [IGNORE_INDEX, 2, 3]), data.Example([4], [4])
    batch = data.collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_local_files_jsonl_json_parquet(tmp_path):
    recs = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    (tmp_path / "d.json").write_text(json.dumps(recs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(recs), str(tmp_path / "d.parquet"))
    for name in ("d.jsonl", "d.json", "d.parquet"):
        assert data.load_records(tmp_path / name) == recs
    (tmp_path / "bad.jsonl").write_text('{"prompt": 1\n')
    with pytest.raises(LowbitError, match="not valid JSON"):
        data.load_records(tmp_path / "bad.jsonl")
    with pytest.raises(LowbitError, match="not found"):
        data.load_records(tmp_path / "missing.jsonl")


def test_pydoc_builtin_has_disjoint_topic_splits():
    train, val = data.load_records("pydoc", "train"), data.load_records("pydoc", "validation")
    assert len(train) > 500 and len(val) > 50
    topic = lambda r: r["instruction"].split('"')[1]  # noqa: E731
    assert not {topic(r) for r in train} & {topic(r) for r in val}
    assert all(data.detect_format(r) == "instruction" and r["response"] for r in train + val)


def test_holdout_split_is_seeded_and_disjoint():
    recs = [{"prompt": str(i), "completion": "x"} for i in range(20)]
    tr, ev = data.split_holdout(recs, 0.25, seed=3)
    assert len(ev) == 5 and len(tr) == 15 and data.split_holdout(recs, 0.25, seed=3) == (tr, ev)
    assert not {r["prompt"] for r in tr} & {r["prompt"] for r in ev}


def test_dataset_folder_goes_through_datasets(tmp_path):
    pytest.importorskip("datasets")
    recs = [{"instruction": f"i{i}", "context": "", "response": f"r{i}"} for i in range(4)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    assert data.load_records(tmp_path, "train") == recs
    with pytest.raises(LowbitError, match="split 'validation'"):
        data.load_records(tmp_path, "validation")
