"""Algorithms: a float weight (+ calibration statistics) in, a quantized weight out.

Each is a pure function ``(W [N, K] float, stats, cfg: QuantConfig) -> LayerResult``
registered in ``ALGORITHMS``; the model-walking lives in ``lowbit.quantize``.
"""
from __future__ import annotations

from typing import Callable

from .awq import awq_quantize
from .bnb import BNB_ALGORITHMS
from .gptq import gptq_quantize
from .result import LayerResult
from .rtn import rtn_quantize

ALGORITHMS: dict[str, Callable[..., LayerResult]] = {
    "rtn": rtn_quantize, "gptq": gptq_quantize, "awq": awq_quantize, **BNB_ALGORITHMS,
}

__all__ = ["ALGORITHMS", "LayerResult"]
