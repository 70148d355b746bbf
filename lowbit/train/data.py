"""Supervised fine-tuning data: records -> token ids with labels on the response only.

Sources: a local .jsonl / .json / .parquet file, a local dataset folder or a hub id (through
``datasets``), or the built-in offline set ``pydoc`` (instructions built from the Python docs).
Record formats, detected from the first record:

=====================  =============================================  ==========================
format                 fields                                         trained on
=====================  =============================================  ==========================
``instruction``        instruction, response, optional context        response + eos
                       (Dolly); Alpaca's instruction/input/output
``prompt-completion``  prompt, completion                             completion + eos
``chat``               messages: [{role, content}, ...]                assistant turns, rendered
                                                                      by the chat template
=====================  =============================================  ==========================
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import LowbitError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding); torch's CE default

#: format -> (required fields, optional fields); aliases are mapped before checking.
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruction": (("instruction", "response"), ("context",)),
    "prompt-completion": (("prompt", "completion"), ()),
    "chat": (("messages",), ()),
}
_ALIASES = {"input": "context", "output": "response", "conversations": "messages"}

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_CONTEXT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Context:\n{context}\n\n### Response:\n"


@dataclass
class Example:
    """One tokenized record. input_ids, labels: int lists of equal length; labels are
    IGNORE_INDEX where no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# ---------------------------------------------------------------- reading records


def _show(record) -> str:
    s = json.dumps(record, ensure_ascii=False, default=str)
    return s if len(s) <= 300 else s[:297] + "..."


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise LowbitError(f"{path} holds a JSON {type(data).__name__}; expected a list of records (or use .jsonl)")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(str(path)).to_pylist()
    except json.JSONDecodeError as e:
        raise LowbitError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix the file") from None
    except ImportError:
        raise LowbitError("reading .parquet needs pyarrow: pip install 'lowbit[data]'") from None
    raise LowbitError(f"dataset file {path} has an unsupported type '{suffix}': use .jsonl, .json or .parquet")


def _read_hub(source: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise LowbitError(f"loading dataset '{source}' needs `datasets`: pip install 'lowbit[train]'") from None
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # datasets raises many types (network, missing split, bad files)
        raise LowbitError(f"cannot load dataset '{source}' split '{split}': {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return list(ds)


def _looks_like_hub_id(s: str) -> bool:
    from ..models.hf import looks_like_hub_id

    return looks_like_hub_id(s) and Path(s).suffix.lower() not in (".jsonl", ".json", ".parquet")


def load_records(source: str | Path, split: str = "train") -> list[dict]:
    """The records of a dataset: local file, local folder / hub id (``datasets``) or ``pydoc``."""
    s = str(source)
    if s in BUILTIN:
        return BUILTIN[s](split)
    p = Path(s).expanduser()
    if p.is_file():
        records = _read_file(p)
    elif p.is_dir() or _looks_like_hub_id(s):
        records = _read_hub(s, split)
    else:
        raise LowbitError(
            f"dataset {s} not found: pass a .jsonl/.json/.parquet file, a dataset folder, a hub id "
            f"or a built-in name ({', '.join(BUILTIN)})"
        )
    if not records:
        raise LowbitError(f"dataset {s} (split {split}) has no records")
    return records


# ---------------------------------------------------------------- formats


def _normalize(record) -> dict:
    if not isinstance(record, dict):
        raise LowbitError(f"dataset records must be JSON objects, got {type(record).__name__}: {_show(record)}")
    return {_ALIASES.get(k, k): v for k, v in record.items()}


def detect_format(record) -> str:
    """The format of one record; an unknown shape raises LowbitError naming the missing field."""
    r = _normalize(record)
    for name, (required, _) in FORMATS.items():
        if all(f in r for f in required):
            return name
    for name, (required, _) in FORMATS.items():
        present = [f for f in required if f in r]
        if present:
            missing = [f for f in required if f not in r]
            raise LowbitError(
                f"dataset record has no '{missing[0]}' field (format {name} needs {', '.join(required)}); "
                f"record: {_show(record)}"
            )
    raise LowbitError(
        "dataset record has none of the expected fields: 'instruction'+'response' (optional 'context'), "
        f"'prompt'+'completion', or 'messages'; record: {_show(record)}"
    )


def check_record(record, fmt: str, index: int) -> dict:
    """The normalized record, or LowbitError naming the missing/ill-typed field and the record."""
    r = _normalize(record)
    required, optional = FORMATS[fmt]
    for f in required:
        if f not in r or r[f] is None:
            raise LowbitError(f"dataset record {index} has no '{f}' field (format {fmt}); record: {_show(record)}")
    for f in required + optional:
        if f == "messages" or r.get(f) is None:
            continue
        if not isinstance(r[f], str):
            raise LowbitError(f"dataset record {index}: field '{f}' must be a string; record: {_show(record)}")
    if fmt == "chat":
        msgs = r["messages"]
        ok = isinstance(msgs, list) and msgs and all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        if not ok:
            raise LowbitError(
                f"dataset record {index}: 'messages' must be a non-empty list of {{role, content}}; record: {_show(record)}"
            )
        if not any(m["role"] == "assistant" for m in msgs):
            raise LowbitError(f"dataset record {index} has no assistant message to train on; record: {_show(record)}")
    return r


def segments(record: dict, fmt: str, tokenizer) -> list[tuple[str, bool]]:
    """The record as text pieces (text, trained). Plain formats get bos/eos added later; chat
    text comes whole from the template (which writes its own special tokens)."""
    if fmt == "instruction":
        ctx = record.get("context") or ""
        tpl = INSTRUCTION_CONTEXT_TEMPLATE if ctx.strip() else INSTRUCTION_TEMPLATE
        return [(tpl.format(instruction=record["instruction"], context=ctx), False), (record["response"], True)]
    if fmt == "prompt-completion":
        return [(record["prompt"], False), (record["completion"], True)]
    return _chat_segments(record["messages"], tokenizer)


def _chat_segments(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise LowbitError("the dataset has chat 'messages' but the tokenizer has no chat template: "
                          "use a model with one, or convert the records to prompt/completion")
    # Render growing prefixes of the conversation; each assistant turn is the text that its
    # message adds after the generation prompt. Templates that rewrite earlier turns (e.g.
    # drop past reasoning) break the prefix property and are refused rather than mislabelled.
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise LowbitError("the tokenizer's chat template does not render conversations prefix by prefix: "
                              "cannot tell assistant tokens apart; convert the records to prompt/completion")
        out += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return [(t, trained) for t, trained in out if t]


# ---------------------------------------------------------------- tokenizing


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    """(bos ids the tokenizer adds by itself, eos ids to end a plain-format response)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    bos = full[: len(full) - len(plain)] if full[-len(plain):] == plain else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return bos, eos


def tokenize(records: list, tokenizer, max_seq_length: int, train_on_prompt: bool = False,
             fmt: str | None = None) -> list[Example]:
    """Token ids + labels of every record; sequences are cut at ``max_seq_length`` tokens and
    records left with nothing to train on are dropped (with a warning)."""
    if not records:
        raise LowbitError("the dataset has no records")
    fmt = fmt or detect_format(records[0])
    bos, eos = _special_ids(tokenizer)
    out, truncated, dropped = [], 0, 0
    for i, rec in enumerate(records):
        r = check_record(rec, fmt, i)
        ids: list[int] = list(bos) if fmt != "chat" else []
        labels: list[int] = [IGNORE_INDEX] * len(ids)
        for text, trained in segments(r, fmt, tokenizer):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if (trained or train_on_prompt) else [IGNORE_INDEX] * len(piece)
        if fmt != "chat":
            ids += eos
            labels += eos
        if len(ids) > max_seq_length:
            truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        ex = Example(ids, labels)
        # Shifted loss: the first token is never a target.
        if sum(1 for x in labels[1:] if x != IGNORE_INDEX) == 0:
            dropped += 1
            continue
        out.append(ex)
    if truncated:
        log.warning("%d of %d records were longer than --max-seq-length %d tokens and were cut",
                    truncated, len(records), max_seq_length)
    if dropped:
        log.warning("%d records had no response tokens within --max-seq-length %d and were skipped", dropped, max_seq_length)
    if not out:
        raise LowbitError(f"no record has response tokens within --max-seq-length {max_seq_length}: raise it")
    return out


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels, attention_mask, each int64 [B, T_max]."""
    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), t), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def split_holdout(records: list, ratio: float, seed: int) -> tuple[list, list]:
    """(train, held-out) with a seeded random ``ratio`` of the records held out."""
    if not 0 <= ratio < 1:
        raise LowbitError(f"--eval-ratio {ratio} must be in [0, 1)")
    n_eval = int(round(len(records) * ratio))
    if ratio and (n_eval == 0 or n_eval == len(records)):
        raise LowbitError(f"--eval-ratio {ratio} of {len(records)} records leaves an empty train or eval set")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


# ---------------------------------------------------------------- built-in offline data


def pydoc_instructions(split: str = "train", chunk_chars: int = 360) -> list[dict]:
    """Instruction records built from the Python reference docs (``pydoc_data.topics``).

    Each topic gives one 'introduce the topic' record (response: the opening of its text)
    and continuation records (context: one passage, response: the next). Every tenth topic
    is the ``validation`` split, so held-out records come from topics never trained on.
    """
    from pydoc_data.topics import topics

    if split not in ("train", "validation", "test"):
        raise LowbitError(f"built-in dataset 'pydoc' has splits train and validation, not '{split}'")
    names = sorted(topics)
    keep = [n for i, n in enumerate(names) if (i % 10 == 0) == (split != "train")]
    records = []
    for name in keep:
        chunks = _chunks(topics[name], chunk_chars)
        records.append({"instruction": f'Introduce the Python topic "{name}" as the reference manual does.',
                        "context": "", "response": chunks[0]})
        for a, b in zip(chunks, chunks[1:]):
            records.append({"instruction": f'Continue this passage of the Python reference on "{name}".',
                            "context": a, "response": b})
    return records


def _chunks(text: str, size: int) -> list[str]:
    """Consecutive pieces of about ``size`` characters, cut at paragraph or line ends."""
    out, cur = [], ""
    for line in text.strip().splitlines(keepends=True):
        if len(cur) + len(line) > size and cur.strip():
            out.append(cur.strip("\n"))
            cur = ""
        cur += line
    if cur.strip():
        out.append(cur.strip("\n"))
    return [c[:2 * size] for c in out]


BUILTIN = {"pydoc": pydoc_instructions}
