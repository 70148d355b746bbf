"""Output folders that appear only when complete.

Everything lowbit writes goes to a hidden temporary folder beside the destination, which is
renamed into place at the end: a run that fails or is killed never leaves something that
looks like a finished result.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LowbitError


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse a non-empty destination (unless ``overwrite``) and an unwritable parent."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LowbitError(f"output path {out} exists and is not a folder: choose another --output-dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LowbitError(f"output folder {out} is not empty: choose another --output-dir or pass --overwrite")
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise LowbitError(f"cannot write to {parent}: choose a writable --output-dir")
    return out


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path``, on failure it is removed."""
    out = check_output_dir(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    os.chmod(out, 0o755)
