"""The Triton kernels for tests: compiled on a CUDA machine, interpreted on CPU.

TRITON_INTERPRET must be set before triton and the kernels are imported (tests/conftest.py
sets it on machines without CUDA), so the modules are imported through the ``tk`` fixture,
and re-imported if something imported them earlier in the other mode.
"""
from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
import torch

GPU = torch.cuda.is_available()
_MODULES = ("pdl", "epilogue", "half2", "gemv", "gemv_half2", "mma16", "wgmma", "gemm", "gemm_tc", "dequant", "fused", "layout", "launch", "configs", "linear")


@pytest.fixture(scope="session")
def tk():
    """Namespace of lowbit.kernels.triton modules + ``device`` to put test tensors on."""
    triton = pytest.importorskip("triton")
    if not GPU and type(triton.language.zeros).__name__ != "InterpretedFunction":
        raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)")
    gemv = importlib.import_module("lowbit.kernels.triton.gemv")
    if (type(gemv.int_gemv_kernel).__name__ == "InterpretedFunction") == GPU:
        for name in _MODULES:  # imported earlier in the other mode: decorate again
            sys.modules.pop(f"lowbit.kernels.triton.{name}", None)
    mods = {name: importlib.import_module(f"lowbit.kernels.triton.{name}") for name in _MODULES}
    return SimpleNamespace(device=torch.device("cuda" if GPU else "cpu"), gpu=GPU, **mods)
