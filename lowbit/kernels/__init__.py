"""Kernel dispatch: the fastest correct kernel for a layer and input, else the reference.

``LOWBIT_KERNEL=reference`` forces the reference kernels (for debugging a fast path).
A fast kernel registers itself in ``KERNELS[op]`` as a function ``(x, layer) -> y`` that
returns ``None`` for inputs it does not take; the reference always takes them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

from . import reference

KernelFn = Callable[[torch.Tensor, torch.nn.Module], "torch.Tensor | None"]
KERNELS: dict[str, list[KernelFn]] = {"int_group": [], "int_group_silu": [], "nf4": [], "int8": []}


def _reference_int_group(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    return reference.int_group_linear(
        x, layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, layer.bias
    )


def _reference_int_group_silu(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """silu(gate) * up of a QuantLinear whose output columns interleave gate (2i) and up (2i + 1)."""
    return reference.silu_pairs(_reference_int_group(x, layer))


def _reference_nf4(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    return reference.nf4_linear(
        x, layer.weight_4bit, layer.absmax_float(), layer.quant_type, layer.blocksize, layer.compute_dtype, layer.bias
    )


def _reference_int8(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    return reference.int8_linear(
        x, layer.weight_int8, layer.weight_scale, layer.threshold, layer.compute_dtype, layer.bias,
        layer.act_block_size,
    )


REFERENCE: dict[str, KernelFn] = {"int_group": _reference_int_group, "int_group_silu": _reference_int_group_silu,
                                  "nf4": _reference_nf4, "int8": _reference_int8}


def forced_reference() -> bool:
    return os.environ.get("LOWBIT_KERNEL", "").lower() == "reference"


_fast_loaded = False


def load_fast_kernels() -> None:
    """Append the Triton kernels to KERNELS, once, if CUDA and triton are both present."""
    global _fast_loaded
    _fast_loaded = True
    # Triton kernels need a CUDA device; triton itself is an optional extra ("gpu").
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    from .triton import register

    register(KERNELS)


def dispatch(op: str, x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """Run ``op`` on input x [..., K] with the weights held by ``layer``."""
    if not _fast_loaded and x.is_cuda:  # lazily: importing lowbit never imports triton
        load_fast_kernels()
    if not forced_reference():
        for kernel in KERNELS.get(op, ()):
            y = kernel(x, layer)
            if y is not None:
                return y
    return REFERENCE[op](x, layer)
