"""Compile a kernel for sm_90 from a CPU test session: the session runs Triton in interpreter
mode (TRITON_INTERPRET=1, set by tests/conftest.py), in which nothing compiles, so the
compile runs in a fresh Python process without it."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def sass(test_file: str, **kwargs) -> str:
    """The string ``_compile(**kwargs)`` of the test module at ``test_file`` returns (its
    kernel's SASS), computed in a fresh process; kwargs must be JSON values."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    folder, module = os.path.split(os.path.splitext(test_file)[0])
    here = os.path.dirname(os.path.abspath(__file__))  # the test module imports this one too
    code = (f"import json, sys; sys.path[:0] = [{folder!r}, {here!r}]; import {module} as t; "
            f"print(t._compile(**json.loads({json.dumps(json.dumps(kwargs))})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def after_ticket(sass_text: str) -> list[str]:
    """The global-memory operations, fences and L1 invalidations of a split-K meeting after its
    ticket (the first ``ATOMG.E.ADD``: the sums go out as REDG, which return nothing), in
    program order, e.g. ``["CCTL.IVALL", "LDG.E.STRONG.GPU", ..., "STG.E.64", "ATOMG.E.EXCH"]``."""
    import re

    ops = re.findall(r"\b(MEMBAR\.\S+|ATOMG\.E\.[A-Z]+|STG\.E\S*|LDG\.E\S*|CCTL\.\S+)[. ;]", sass_text)
    return ops[ops.index("ATOMG.E.ADD") + 1:]
