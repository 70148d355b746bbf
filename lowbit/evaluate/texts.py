"""Evaluation texts: a dataset name or a file -> one string (documents joined with "\\n\\n").

``load_text(source, split="test", data_dir=None) -> str``

- ``"wikitext2"`` (aliases ``wikitext``, ``wikitext-2``): WikiText-2. Read from a local
  ``wikitext-2-{split}.txt`` when one is found (``data_dir``, else the ``LOWBIT_DATA_DIR``
  environment variable); otherwise from the hub through ``datasets``
  (``wikitext/wikitext-2-raw-v1``, the set the GPTQ paper evaluates on). The local files are
  the tokenized v1 release (``<unk>``, one raw line per row); they are split into the same
  rows the hub loader yields (blank lines become empty rows) before joining.
- ``"pydocs"``: the Python documentation topics shipped with CPython (``pydoc_data.topics``),
  offline everywhere; documents sorted by topic name. There is no split: all of it.
- a path: a ``wikitext-2-{split}.txt`` file or a folder holding one; a ``.txt`` file (one
  document); a ``.jsonl`` file (documents from the ``"text"`` field of each line).

Joining with "\\n\\n" is the GPTQ protocol (``"\\n\\n".join(data["text"])``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import LowbitError

log = logging.getLogger(__name__)

WIKITEXT_NAMES = ("wikitext2", "wikitext-2", "wikitext")
DATASETS = ("wikitext2", "pydocs")
DATA_DIR_ENV = "LOWBIT_DATA_DIR"


def is_dataset_name(source: object) -> bool:
    return isinstance(source, str) and source.lower() in WIKITEXT_NAMES + ("pydocs",)


def join_rows(rows: list[str]) -> str:
    """The GPTQ join: rows (documents, or lines of a line-per-row dataset) with "\\n\\n"."""
    return "\n\n".join(rows)


def wikitext_rows(raw: str) -> list[str]:
    """Rows as the hub's wikitext loader yields them from the raw release: one per line,
    the line ending kept, whitespace-only lines as empty rows."""
    # Split on "\n" only, as iterating over the file does (str.splitlines also splits on
    # \x0c, \u2028, ...).
    lines = [line + "\n" for line in raw.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return [line if line.strip() else "" for line in lines]


def _wikitext_file(split: str, data_dir: "str | Path | None") -> Path | None:
    for d in (data_dir, os.environ.get(DATA_DIR_ENV)):
        if not d:
            continue
        p = Path(d).expanduser()
        f = p / f"wikitext-2-{split}.txt" if p.is_dir() else p
        if f.is_file():
            return f
        if data_dir is not None and d == data_dir:
            raise LowbitError(f"no wikitext-2-{split}.txt in {p}: point --data-dir at the folder holding it")
    return None


def _wikitext_hub(split: str) -> str:
    try:
        import datasets
    except ImportError as e:
        raise LowbitError(
            "wikitext2 needs the 'datasets' package (pip install 'lowbit[data]') or a local copy: "
            f"pass --data-dir FOLDER with wikitext-2-{split}.txt (or set {DATA_DIR_ENV})"
        ) from e
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:  # offline, hub error, unknown split: all mean "no data from the hub"
        raise LowbitError(
            f"could not load wikitext2 ({split}) from the hub ({type(e).__name__}): when offline pass "
            f"--data-dir FOLDER with wikitext-2-{split}.txt (or set {DATA_DIR_ENV})"
        ) from e
    return join_rows(list(ds["text"]))


def pydocs_text() -> str:
    from pydoc_data.topics import topics

    return join_rows([topics[k] for k in sorted(topics)])


def file_text(path: Path, split: str = "test") -> str:
    if path.is_dir():
        f = path / f"wikitext-2-{split}.txt"
        if not f.is_file():
            raise LowbitError(f"{path} is a folder without wikitext-2-{split}.txt: pass a .txt or .jsonl file")
        path = f
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LowbitError(f"{path} is not UTF-8 text: pass a .txt or .jsonl file") from e
    if path.name.startswith("wikitext-2-"):
        return join_rows(wikitext_rows(raw))
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise LowbitError(f"{path}:{i}: expected a JSON object with a \"text\" field") from e
        return join_rows(rows)
    return raw


def load_text(source: "str | Path", split: str = "test", data_dir: "str | Path | None" = None) -> str:
    """The evaluation text of a dataset name or a file (see the module docstring)."""
    name = str(source)
    if name.lower() in WIKITEXT_NAMES:
        local = _wikitext_file(split, data_dir)
        if local is not None:
            log.info("wikitext2 (%s) from %s", split, local)
            return join_rows(wikitext_rows(local.read_text(encoding="utf-8")))
        return _wikitext_hub(split)
    if name.lower() == "pydocs":
        return pydocs_text()
    path = Path(name).expanduser()
    if not path.exists():
        raise LowbitError(f"dataset {name} is neither {' nor '.join(DATASETS)} nor an existing file")
    return file_text(path, split)
