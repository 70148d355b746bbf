"""Memory: bytes of a model's parameters and buffers (in total, by dtype, at storage precision)
and the peak memory of a piece of work (CUDA max allocated, or CPU peak RSS)."""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn


def _tensors(model: nn.Module):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key in seen:  # tied weights count once
            continue
        seen.add(key)
        yield t


def memory_footprint(model: nn.Module) -> int:
    """Bytes of parameters and buffers, tied tensors counted once."""
    return sum(t.numel() * t.element_size() for t in _tensors(model))


def bytes_by_dtype(model: nn.Module) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for t in _tensors(model):
        counts[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
    return dict(counts)


def storage_bytes(model: nn.Module, float_bytes: int = 2) -> int:
    """Bytes of the weights with every floating-point tensor counted at ``float_bytes`` per
    element (2: as a 16-bit checkpoint stores them) and integer tensors as they are.

    Makes sizes comparable whatever dtype the float parts run in (CPU runs them in float32).
    """
    return sum(t.numel() * (float_bytes if t.is_floating_point() else t.element_size()) for t in _tensors(model))


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA ``max_memory_allocated`` on a CUDA device, the
    process's peak resident set size (Linux VmHWM, reset on entry) on CPU.

    ``.bytes`` after the block; ``.kind`` is "cuda max allocated" or "peak RSS". Where the
    kernel does not let VmHWM be reset, the figure is the process's lifetime peak and ``.kind``
    says so.
    """

    def __init__(self, device: "str | torch.device" = "cpu"):
        self.device = torch.device(device)
        self.bytes = 0
        self.kind = "cuda max allocated" if self.device.type == "cuda" else "peak RSS"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not reset_peak_rss():
            self.kind = "peak RSS (process lifetime)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = peak_rss()


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM; ru_maxrss where absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
