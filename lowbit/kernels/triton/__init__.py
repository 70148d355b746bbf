"""Triton kernels for CUDA: fused dequantize-matmuls for the quantized layers.

Layout (``layout``), kernels (``gemv``: CUDA-core GEMV for decode rows; ``gemm``:
tensor-core GEMM; ``epilogue``: shared decode and split-K store), launchers with explicit
configs (``launch``), per-shape configs (``configs``) and the dispatch entries with their
guards (``linear``). ``lowbit.kernels`` registers the entries only when CUDA and triton
are both present; tests call the launchers directly (on CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations


def register(kernels: dict) -> None:
    """Append the fast kernels to ``kernels[op]`` (the dispatch table of lowbit.kernels)."""
    from .linear import int_group, int_group_silu, nf4

    for op, fn in (("int_group", int_group), ("int_group_silu", int_group_silu), ("nf4", nf4)):
        if fn not in kernels.setdefault(op, []):
            kernels[op].append(fn)
