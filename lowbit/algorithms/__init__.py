"""Algorithms: a float weight (+ calibration statistics) in, a quantized weight out.

Each is a pure function ``(W [N, K] float, stats, cfg: QuantConfig) -> LayerResult``
registered in ``ALGORITHMS``; the model-walking lives in ``lowbit.quantize``.
"""
from __future__ import annotations

from typing import Callable

from .bnb import BNB_ALGORITHMS
from .result import LayerResult
from .rtn import rtn_quantize

ALGORITHMS: dict[str, Callable[..., LayerResult]] = {"rtn": rtn_quantize, **BNB_ALGORITHMS}

__all__ = ["ALGORITHMS", "LayerResult"]
