"""Calibration data: a named dataset -> N seeded windows of L tokens (LongTensor [N, L]).

``load(tokenizer, cfg: CalibrationConfig) -> torch.LongTensor [n_samples, seq_len]``

Sources (``cfg.dataset``):

=================  ============================================================  =========
name               what                                                          network
=================  ============================================================  =========
``path.txt``       one document (the whole file)                                 no
``path.jsonl``     one record (JSON object) per line                             no
``path.parquet``   one record per row (needs pyarrow)                            no
``pydocs``         the Python documentation topics (``pydoc_data.topics``)       no
``wikitext2``      ``wikitext/wikitext-2-raw-v1`` (a local ``wikitext-2-{split}``  hub
                   ``.txt`` in ``$LOWBIT_DATA_DIR`` is used first)
``c4``             ``allenai/c4``, first English shard of the split              hub
``pileval``        ``mit-han-lab/pile-val-backup`` (AutoAWQ's default)           hub
any other id       ``datasets.load_dataset(id, split=split)``                    hub
=================  ============================================================  =========

A record becomes text through ``text_column`` when given, else the first of ``text``,
``content``, ``document``; chat records (``messages``/``conversations``: [{role, content}])
and instruction/QA records (``instruction`` [+ ``input``/``context``] + ``output``/``response``,
``question`` + ``answer``, ``prompt`` + ``completion``/``response``) are rendered with the
tokenizer's chat template when it has one, so the model is calibrated on the text it will see.

Windows: the texts are joined with "\\n\\n" (the GPTQ protocol) and tokenized without special
tokens into one stream of T tokens, which is cut into T // L non-overlapping windows from a
seeded random offset; N of them are drawn at random with the seed: distinct, reproducible.
T < N * L is an error (no window is used twice). Datasets much larger than needed are read
from a seeded random record onwards, only as far as about 12 characters per needed token.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Callable

import torch

from ..config import CalibrationConfig
from ..errors import LowbitError

log = logging.getLogger(__name__)

#: Built-in hub datasets: name -> (dataset id, config name, data_files by split, text column).
HUB_BUILTINS: dict[str, tuple[str, str | None, dict | None, str]] = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", None, "text"),
    "c4": ("allenai/c4", None, {"train": "en/c4-train.00000-of-01024.json.gz",
                                "validation": "en/c4-validation.00000-of-00008.json.gz"}, "text"),
    "pileval": ("mit-han-lab/pile-val-backup", None, None, "text"),
}
OFFLINE_BUILTINS = ("pydocs",)
BUILTINS = tuple(HUB_BUILTINS) + OFFLINE_BUILTINS
DEFAULT_DATASET = "pileval"
FILE_TYPES = (".txt", ".jsonl", ".parquet")
DATA_DIR_ENV = "LOWBIT_DATA_DIR"
OFFLINE_HINT = f"offline, use a local {'/'.join(FILE_TYPES)} file or the built-in 'pydocs'"
#: Characters read per needed token from datasets much larger than needed (about 3x margin).
CHARS_PER_TOKEN_BUDGET = 12

TEXT_COLUMNS = ("text", "content", "document")
CHAT_COLUMNS = ("messages", "conversations")
#: (user fields joined with a blank line, assistant field) of instruction/QA records.
QA_FIELDS = (
    (("instruction", "input"), "output"),
    (("instruction", "context"), "response"),
    (("question",), "answer"),
    (("prompt",), "completion"),
    (("prompt",), "response"),
)


# ---------------------------------------------------------------- reading records


def read_file(path: Path) -> list:
    """Records of a local file: str documents (.txt) or dicts (.jsonl, .parquet)."""
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise LowbitError(f"calibration file {path} has an unsupported type '{suffix}': use {', '.join(FILE_TYPES)}")
    if path.stat().st_size == 0:
        raise LowbitError(f"calibration file {path} is empty: pass a file with text")
    if suffix == ".txt":
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise LowbitError(f"calibration file {path} is not UTF-8 text") from None
    if suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise LowbitError(f"{path}:{i}: not valid JSON ({e.msg}): one JSON object per line") from None
        return records
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LowbitError("reading .parquet needs pyarrow: pip install 'lowbit[data]'") from None
    return pq.read_table(str(path)).to_pylist()


def _wikitext_local(split: str) -> Path | None:
    folder = os.environ.get(DATA_DIR_ENV)
    name = {"validation": "valid"}.get(split, split)
    f = Path(folder).expanduser() / f"wikitext-2-{name}.txt" if folder else None
    return f if f is not None and f.is_file() else None


def read_hub(name: str, split: str) -> list:
    """Records of a hub dataset (a built-in name or a dataset id) through ``datasets``."""
    if name == "wikitext2" and (local := _wikitext_local(split)) is not None:
        log.info("calibration: wikitext2 (%s) from %s", split, local)
        return [line for line in local.read_text(encoding="utf-8").splitlines(keepends=True)]
    try:
        import datasets
    except ImportError:
        raise LowbitError(f"dataset '{name}' needs the 'datasets' package (pip install 'lowbit[data]'); "
                          f"{OFFLINE_HINT}") from None
    repo, config, files, _ = HUB_BUILTINS.get(name, (name, None, None, None))
    hub_split = {"valid": "validation"}.get(split, split)
    kwargs = {"data_files": {hub_split: files[hub_split]}} if files and hub_split in files else {}
    try:
        ds = datasets.load_dataset(repo, config, split=hub_split, **kwargs)
    except (ConnectionError, OSError) as e:  # no network, or the hub has no such dataset
        what = f"built-in dataset '{name}'" if name in HUB_BUILTINS else (
            f"dataset '{name}' is not a local file nor a built-in ({', '.join(BUILTINS)}) and")
        local = f" (or set {DATA_DIR_ENV} to a folder with wikitext-2-{{train,valid,test}}.txt)" if name == "wikitext2" else ""
        raise LowbitError(f"{what} could not be loaded from the Hugging Face hub ({_first_line(e)}): "
                          f"check the name and the network; {OFFLINE_HINT}{local}") from None
    except Exception as e:  # datasets raises many types: unknown split, bad files, missing config
        raise LowbitError(f"could not load dataset '{name}' split '{hub_split}': {_first_line(e)}") from None
    return ds


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def pydocs_records() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_records(name: str, split: str) -> list:
    """Records of a calibration source (see the module docstring)."""
    if name == "pydocs":
        return pydocs_records()
    path = Path(name).expanduser()
    if path.is_file():
        return read_file(path)
    if path.is_dir() or path.suffix.lower() in FILE_TYPES:
        raise LowbitError(f"calibration file {name} not found: pass an existing {'/'.join(FILE_TYPES)} file")
    return read_hub(name, split)


# ---------------------------------------------------------------- records -> texts


def record_text(record, text_column: str | None, tokenizer) -> str:
    """The text of one record (see the module docstring for the fields tried)."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise LowbitError(f"calibration records must be strings or JSON objects, got {type(record).__name__}")
    if text_column is not None:
        if text_column not in record:
            raise LowbitError(f"calibration record has no column '{text_column}'; columns: {', '.join(record)}")
        value = record[text_column]
        return render_chat(value, tokenizer) if isinstance(value, list) else str(value or "")
    for col in TEXT_COLUMNS:
        if isinstance(record.get(col), str):
            return record[col]
    for col in CHAT_COLUMNS:
        if isinstance(record.get(col), list):
            return render_chat(record[col], tokenizer)
    for user_fields, answer in QA_FIELDS:
        if user_fields[0] in record and answer in record:
            user = "\n\n".join(str(record[f]) for f in user_fields if record.get(f))
            return render_chat([{"role": "user", "content": user},
                                {"role": "assistant", "content": str(record[answer])}], tokenizer)
    raise LowbitError(f"cannot find the text in calibration records with columns {', '.join(record)}: "
                      "name it with --text-column")


def render_chat(messages: list, tokenizer) -> str:
    """A conversation [{role, content}] (ShareGPT's {from, value} too) as the model sees it."""
    roles = {"human": "user", "gpt": "assistant"}
    msgs = [{"role": roles.get(m.get("role", m.get("from")), m.get("role", m.get("from"))),
             "content": m.get("content", m.get("value", ""))} for m in messages if isinstance(m, dict)]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False)
    return "\n\n".join(str(m["content"]) for m in msgs)


def select_records(records, n_chars: int, seed: int) -> list:
    """All records, or, for a dataset much larger than needed, consecutive records from a
    seeded random start (wrapping around) until about ``n_chars`` characters."""
    n = len(records)
    if n == 0:
        return []
    sample = [records[i] for i in range(min(n, 64))]
    avg = max(1.0, sum(len(str(r)) for r in sample) / len(sample))
    if avg * n <= 2 * n_chars:
        return list(records)
    start = random.Random(seed).randrange(n)
    out, total = [], 0
    for k in range(n):
        r = records[(start + k) % n]
        out.append(r)
        total += len(str(r))
        if total >= n_chars:
            break
    return out


# ---------------------------------------------------------------- texts -> windows


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """LongTensor [T]: the texts joined with "\\n\\n", tokenized without special tokens."""
    text = "\n\n".join(t for t in texts if t)
    if not text.strip():
        return torch.zeros(0, dtype=torch.long)
    # verbose=False: a corpus is longer than model_max_length by design.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, n_samples: int, seq_len: int, seed: int, name: str = "data") -> torch.Tensor:
    """LongTensor [n_samples, seq_len]: distinct non-overlapping windows of ``stream`` [T],
    drawn with ``seed``."""
    total = stream.numel()
    need = n_samples * seq_len
    if total < need:
        raise LowbitError(
            f"calibration data '{name}' has {total} tokens, fewer than the {n_samples} x {seq_len} = {need} "
            "needed: use fewer --calibration-samples, a shorter --max-seq-length or more text"
        )
    g = torch.Generator().manual_seed(seed)
    slots = total // seq_len
    offset = int(torch.randint(0, total - slots * seq_len + 1, (1,), generator=g))
    chosen = torch.randperm(slots, generator=g)[:n_samples]
    starts = offset + chosen * seq_len
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


def load(tokenizer, cfg: CalibrationConfig, read: Callable[[str, str], list] = read_records) -> torch.Tensor:
    """LongTensor [cfg.n_samples, cfg.seq_len] of calibration token ids."""
    if tokenizer is None:
        raise LowbitError("calibration needs the model's tokenizer: copy the tokenizer files into the model folder")
    name = cfg.dataset or DEFAULT_DATASET
    records = read(name, cfg.split)
    if len(records) == 0:
        raise LowbitError(f"calibration data '{name}' (split {cfg.split}) has no records")
    records = select_records(records, CHARS_PER_TOKEN_BUDGET * cfg.n_samples * cfg.seq_len, cfg.seed)
    texts = [record_text(r, cfg.text_column, tokenizer) for r in records]
    stream = token_stream(tokenizer, texts)
    ids = sample_windows(stream, cfg.n_samples, cfg.seq_len, cfg.seed, name)
    log.info("calibration: %d x %d tokens from %s (%d tokens read)", cfg.n_samples, cfg.seq_len, name, stream.numel())
    return ids
