"""Programmatic dependent launch (PDL, CUDA compute capability 9.0 and newer).

At batch 1 a decode step is a chain of short kernels, and each one normally starts only
after the one before it has finished: the launch and the first memory round trip of every
kernel are paid in series (~1 us each, a few hundred us a token). Launched with PDL, a
kernel may start as soon as the kernel ahead of it has released it (``release``), load
what nothing in the chain writes (its weights), and ``wait`` - until the kernel ahead has
finished and its writes are visible - only before it reads activations or writes anything.

The rule every kernel here follows, and that makes the early start safe: before ``wait``,
read only weights (written by no kernel of the chain) and write nothing. A kernel that is
not PDL-aware (cuBLAS, torch) releases its successor only when it completes, so the usual
stream order holds around it. ``LOWBIT_PDL=0`` turns PDL off.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    AVAILABLE = True
except ImportError:  # pragma: no cover - older Triton: the kernels run without PDL
    AVAILABLE = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def wait(PDL: tl.constexpr):
    """Block until the kernel ahead in the stream has finished and its writes are visible."""
    if PDL:
        gdc_wait()


@triton.jit
def release(PDL: tl.constexpr):
    """Let the next kernel in the stream launch (once every program has released or ended)."""
    if PDL:
        gdc_launch_dependents()


try:  # the same two steps for Gluon kernels, which cannot call plain-Triton helpers
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def gluon_wait(PDL: gl.constexpr):
        """``wait`` in a Gluon kernel."""
        if PDL:
            gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def gluon_release(PDL: gl.constexpr):
        """``release`` in a Gluon kernel."""
        if PDL:
            gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                      is_pure=False, pack=1)
except ImportError:  # pragma: no cover - no Gluon: no Gluon kernels either
    pass


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    if not AVAILABLE or device.type != "cuda" or os.environ.get("LOWBIT_PDL", "1") == "0":
        return False
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def launch_args(device: torch.device) -> dict:
    """Keyword arguments for a PDL-aware kernel launch: the ``PDL`` constexpr, and Triton's
    ``launch_pdl`` option where PDL is on."""
    return dict(PDL=True, launch_pdl=True) if enabled(device) else dict(PDL=False)
