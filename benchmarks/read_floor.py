"""The floor under a weight-streaming kernel on this GPU: how long one graphed launch takes
to do nothing, and to read N bytes once (no arithmetic), timed as benchmarks/kernels.py times
the matmuls (each call on its own buffer, rotating over >= 160 MB, one CUDA graph).

    PYTHONPATH=. python benchmarks/read_floor.py

A matmul that must read B bytes cannot beat the read row for B; the int4 GEMV's bytes are
those of its packed weight, scales and zeros (K x N / 2 * ~1.03).
"""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from kernels import copies_for, graph_us
from lowbit.kernels.triton import pdl

SIZES_MB = (0.0, 2.2, 8.7, 30.4)  # nothing, then the int4 g128 weights of 4096x1024, 4096x4096, 4096x14336


@triton.jit
def _read_kernel(src, out, n_words, per_prog, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """XOR of this program's words, stored once; with PDL the loads come before the wait for
    the kernel ahead, as the GEMV's weight loads do."""
    pdl.release(PDL)
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    start = pid * per_prog
    for off in range(start, start + per_prog, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        acc ^= tl.load(src + idx, mask=idx < n_words, other=0)
    pdl.wait(PDL)
    tl.store(out + pid, tl.sum(acc, axis=0))


def read_us(nbytes: float, programs: int, warps: int, use_pdl: bool = False) -> float:
    words = max(1, int(nbytes) // 4)
    bufs = [torch.randint(0, 1 << 30, (words,), dtype=torch.int32, device="cuda")
            for _ in range(copies_for(max(words * 4, 1)))]
    out = torch.empty(programs, dtype=torch.int32, device="cuda")
    block = 128 * warps * 4
    per = triton.cdiv(triton.cdiv(words, programs), block) * block
    grid = (triton.cdiv(words, per),)
    extra = dict(launch_pdl=True) if use_pdl else {}
    return graph_us([lambda b=b: _read_kernel[grid](b, out, words, per, BLOCK=block, PDL=use_pdl, num_warps=warps,
                                                    **extra) for b in bufs])


def main() -> int:
    if not torch.cuda.is_available():
        print("benchmarks/read_floor.py needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}")
    print(f"{'MB read':>8}{'programs':>10}{'warps':>7}{'us':>8}{'GB/s':>8}")
    for mb in SIZES_MB:
        best = None
        for programs in (132, 264, 528, 1056, 2112):
            for warps in (4, 8):
                us = read_us(mb * 1e6, programs, warps)
                print(f"{mb:>8.1f}{programs:>10}{warps:>7}{us:>8.2f}{mb * 1e3 / us:>8.0f}", flush=True)
                best = us if best is None else min(best, us)
        print(f"best for {mb:.1f} MB: {best:.2f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
