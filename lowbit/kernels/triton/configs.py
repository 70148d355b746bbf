"""Which config a shape gets: a table measured on an H100 (benchmarks/kernels.py --tune),
else a heuristic that keeps every SM busy.

Keys are (N, K, bits); M is bucketed. The layout's column block (``block_n``) is chosen once
per layer, when it is repacked, so it cannot depend on M.
"""
from __future__ import annotations

import functools
import json
from dataclasses import replace

import torch
import triton

from .launch import GemmConfig, GemvConfig
from .layout import PK

#: (N, K, bits) -> layout column block. Filled from H100 measurements.
BLOCK_N: dict[tuple[int, int, int], int] = {}
#: (N, K, bits) -> GEMV config at M = 1.
GEMV: dict[tuple[int, int, int], GemvConfig] = {}
#: (N, K, bits, M bucket) -> GEMM config.
GEMM: dict[tuple[int, int, int, int], GemmConfig] = {}

#: Largest M that runs on the CUDA-core GEMV (above it the tensor-core kernel wins).
GEMV_MAX_M = 1
M_BUCKETS = (16, 32, 64, 128, 256)
#: Bytes of shared memory the GEMM's pipeline stages may take (H100: 227 KB a block).
SHARED_BUDGET = 160 * 1024


def load_table(path: str) -> None:
    """Add the best configs written by ``benchmarks/kernels.py --tune`` (a JSON list)."""
    with open(path) as f:
        for e in json.load(f):
            key = (e["n"], e["k"], e["bits"])
            if e["kind"] == "gemv":
                GEMV[key] = GemvConfig(**e["cfg"])
                BLOCK_N[key] = e["bn"]
            else:
                GEMM[key + (m_bucket(e["m"]),)] = GemmConfig(**e["cfg"])


@functools.lru_cache(maxsize=None)
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _sms(device: torch.device) -> int:
    return sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 132


def block_n(n: int, k: int, bits: int) -> int:
    if (n, k, bits) in BLOCK_N:
        return BLOCK_N[(n, k, bits)]
    # Wide blocks: a thread then holds several rows of one column block, which shares the
    # per-column zero/scale work; 32 for narrow layers so they still spread over the SMs.
    return 64 if n >= 2048 else 32


def _fill_split(programs: int, chunks: int, sms: int) -> int:
    """Power-of-two K split giving about two programs per SM, at most one per chunk."""
    split = 1
    while programs * split < 2 * sms and split * 2 <= chunks:
        split *= 2
    return split


def gemv_config(n: int, k: int, bits: int, nb: int, chunks: int, device: torch.device) -> GemvConfig:
    if (n, k, bits) in GEMV:
        return GEMV[(n, k, bits)]
    return GemvConfig(chunks=1, split=_fill_split(nb, chunks, _sms(device)), num_warps=4, num_stages=3)


def m_bucket(m: int) -> int:
    for b in M_BUCKETS:
        if m <= b:
            return b
    return M_BUCKETS[-1] * 2  # "large": prefill


def _fit_shared(cfg: GemmConfig, bits: int) -> GemmConfig:
    """Fewer pipeline stages when a stage (x slab + words of one chunk) would overflow
    shared memory: 2-bit chunks are 16 slabs deep, so x takes BM * 512 halves a stage."""
    kch = 32 // bits * PK
    stage = cfg.bm * kch * 2 + PK * cfg.bnt * 4
    stages = cfg.num_stages
    while stages > 1 and stages * stage > SHARED_BUDGET:
        stages -= 1
    return replace(cfg, num_stages=stages)


def gemm_config(m: int, n: int, k: int, bits: int, chunks: int, device: torch.device) -> GemmConfig:
    b = m_bucket(m)
    if (n, k, bits, b) in GEMM:
        return GEMM[(n, k, bits, b)]
    if b <= 16:
        cfg = GemmConfig(bm=16, bnt=64, num_warps=4, num_stages=3)
    elif b <= 64:
        cfg = GemmConfig(bm=b, bnt=64, num_warps=4, num_stages=3)
    else:
        cfg = GemmConfig(bm=128, bnt=128, num_warps=8, num_stages=2)
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bnt)
    return _fit_shared(replace(cfg, split=_fill_split(tiles, chunks, _sms(device))), bits)
