"""Downstream tasks (hellaswag, arc_easy, ...) through EleutherAI's lm-evaluation-harness.

    run_tasks(model, tokenizer, tasks, batch_size=1, limit=None, num_fewshot=None)
        -> {task: {metric: value}}

An optional extra (``pip install 'lowbit[tasks]'``); the harness downloads each task's data
from the hub on first use, so offline it works only from a warm ``datasets`` cache. The model
is passed in memory (``HFLM(pretrained=model)``), so quantized lowbit models are evaluated as
they run, not reloaded by the harness.
"""
from __future__ import annotations

import logging
import math

from torch import nn

from ..errors import LowbitError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lowbit[tasks]' (lm-eval-harness)"


def parse_tasks(spec: "str | list[str] | None") -> list[str]:
    if spec is None:
        return []
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return [n.strip() for n in names if n.strip()]


def _import_harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise LowbitError(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}") from e
    return lm_eval, HFLM


def run_tasks(model: nn.Module, tokenizer, tasks: "str | list[str]", batch_size: int = 1,
              limit: "int | float | None" = None, num_fewshot: int | None = None) -> dict[str, dict[str, float]]:
    """Scores of ``model`` on lm-eval ``tasks``: {task: {"acc,none": 0.41, ...}} (numbers only)."""
    names = parse_tasks(tasks)
    if not names:
        raise LowbitError("--tasks is empty: name tasks such as hellaswag,arc_easy")
    lm_eval, HFLM = _import_harness()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot)
    except (KeyError, ValueError) as e:  # unknown task names surface as these
        raise LowbitError(f"lm-eval could not run tasks {','.join(names)}: {e}") from e
    except (ConnectionError, OSError) as e:
        raise LowbitError(f"lm-eval could not fetch the data of {','.join(names)} ({type(e).__name__}): "
                          "the tasks need the hub or a warm datasets cache") from e
    results = {}
    for task, metrics in (out or {}).get("results", {}).items():
        results[task] = {k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return results
