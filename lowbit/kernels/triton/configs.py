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

from .launch import DequantConfig, GemmConfig, GemvConfig, Mma16Config, TcConfig, WgmmaConfig
from .layout import PK

# Measured on an H100 SXM (benchmarks/results/h100_tune_best_run2.json: int4 g128 asym,
# graphed calls on L2-cold weights; the comments give our time and fp16 cuBLAS's).
#: (N, K, bits) -> layout column block.
BLOCK_N: dict[tuple[int, int, int], int] = {
    (1024, 4096, 4): 64,
    (4096, 4096, 4): 64,
    (4096, 14336, 4): 64,
    (14336, 4096, 4): 32,
}
#: (N, K, bits) -> GEMV config at M = 1.
GEMV: dict[tuple[int, int, int], GemvConfig] = {
    (1024, 4096, 4): GemvConfig(chunks=1, split=16, num_warps=4, num_stages=1, prefetch=False),  # 5.7 us, fp16 7.5
    (4096, 4096, 4): GemvConfig(chunks=1, split=8, num_warps=4, num_stages=1, prefetch=False),  # 9.3 us, fp16 16.0
    (4096, 14336, 4): GemvConfig(chunks=1, split=8, num_warps=4, num_stages=1, prefetch=False),  # 19.1 us, fp16 44.5
    (14336, 4096, 4): GemvConfig(chunks=2, split=1, num_warps=4, num_stages=1, prefetch=False),  # 19.7 us, fp16 42.2
}
#: (N, K, bits) -> f16x2 GEMV config (gemv_half2: int4 codes, fp16/bf16 activations) at M = 1.
#: Several chunks a step over part of a block (``chunks``, ``cols``; no split-K):
#: benchmarks/results/h100_tune_half2_steps_s9run4.jsonl (at the BLOCK_N above; our us, fp16 us,
#: and the split-K config's before). The decoder's merged q|k|v and gate|up (block 64):
#: h100_tune_half2_merged_s9run6.jsonl.
HALF2: dict[tuple[int, int, int], GemvConfig] = {
    # the first step decoded before the PDL wait (h100_tune_predecode_s10run3.jsonl; without: 2.5)
    (1024, 4096, 4): GemvConfig(chunks=16, cols=16, num_warps=16, num_stages=1, prefetch=True, depth=1,
                                half2=True, predecode=True),  # 2.3, 7.6 (split-K 16: 3.7)
    (4096, 4096, 4): GemvConfig(chunks=8, cols=32, num_warps=16, num_stages=1, prefetch=True,
                                half2=True),  # 5.1, 15.9 (split-K 8: 6.5)
    (14336, 4096, 4): GemvConfig(chunks=4, cols=16, num_warps=4, num_stages=1, prefetch=True,
                                 half2=True),  # 13.2, 42.0 (split-K 4: 14.3)
    (4096, 14336, 4): GemvConfig(chunks=16, cols=32, num_warps=16, num_stages=1, prefetch=True,
                                 half2=True),  # 13.4, 43.6 (split-K 16: 13.8)
    (6144, 4096, 4): GemvConfig(chunks=8, cols=32, num_warps=8, num_stages=1, prefetch=True,
                                half2=True),  # 6.5, 21.1 (split-K 4: 8.1; h100_tune_half2_merged_s9run6.jsonl)
    # (steps of 4 chunks over 16 columns: 25.1 us, the same)
    (28672, 4096, 4): GemvConfig(split=1, num_warps=4, num_stages=1, prefetch=True, depth=2, half2=True),  # 25.2, 82.6
}
#: (N, K, bits) -> mma16 config (int4 groups >= 128, fp16 activations, 2 <= M <= 16), at the
#: BLOCK_N above (the layout is shared with the M = 1 GEMV). benchmarks/results/
#: h100_tune_mma16_run12.jsonl, M = 16 (our us, fp16 us; the slab GEMM it replaces, run 10).
MMA16: dict[tuple[int, int, int], Mma16Config] = {
    # 8 chunks a step over 16 columns (s10 runs 1 and 3): M = 16 6.2 us, M = 4 4.8 (split-K 16: 8.1, 5.4)
    (1024, 4096, 4): Mma16Config(chunks=8, wc=4, wr=2, v=2, cols=16, depth=2),  # 6.2, 7.7 (gemm.py 8.1)
    (4096, 4096, 4): Mma16Config(split=8, wr=1, wh=2, depth=2),  # 11.8, 16.0 (13.5)
    (14336, 4096, 4): Mma16Config(split=2, wr=1, wh=1, depth=2),  # 24.2, 42.8 (30.1)
    (4096, 14336, 4): Mma16Config(split=8, wr=1, wh=2, depth=2),  # 22.9, 45.1 (27.6)
    # the decoder's merged q|k|v and gate|up (h100_tune_mma16_merged_run15.jsonl, block 64)
    (6144, 4096, 4): Mma16Config(split=4, wr=1, wh=2, depth=2),  # 14.9, 21.3
    (28672, 4096, 4): Mma16Config(split=1, wr=1, wh=2, depth=2),  # 35.9, 86.5
}
#: (N, K, bits, M bucket) -> GEMM config.
GEMM: dict[tuple[int, int, int, int], GemmConfig | DequantConfig | TcConfig] = {
    (1024, 4096, 4, 16): GemmConfig(bm=16, bnt=64, split=16, num_warps=4, num_stages=4),  # 8.1 us, fp16 7.7
    # M = 256: dequantize + cuBLAS beat the fused kernel on every shape (run 3,
    # benchmarks/results/h100_table_int4_run3.txt: 14.1/29.2/108.0/114.3 us against fused 33.0/42.0/122.0/135.8).
    (1024, 4096, 4, 256): DequantConfig(),  # 14.1 us, fp16 9.1
    (4096, 4096, 4, 16): GemmConfig(bm=16, bnt=64, split=4, num_warps=4, num_stages=3, swap=True),  # 13.5, 16.1
    (4096, 4096, 4, 256): DequantConfig(),  # 29.2 us, fp16 18.7
    (4096, 14336, 4, 16): GemmConfig(bm=16, bnt=64, split=8, num_warps=4, num_stages=3, swap=True),  # 28.3, 45.0
    (4096, 14336, 4, 256): DequantConfig(),  # 114.3 us, fp16 58.7
    (14336, 4096, 4, 16): GemmConfig(bm=16, bnt=64, split=4, num_warps=4, num_stages=3, swap=True),  # 30.2, 43.0
    (14336, 4096, 4, 256): DequantConfig(),  # 108.0 us, fp16 50.9
    # M = 33..64: the tiled tensor-core kernel (gemm_tc, scale applied after each one-group
    # step), benchmarks/results/h100_tune_tc_run4[ab].jsonl: beat the slab kernel (gemm.py) on
    # every shape; our us, fp16 us, gemm.py us.
    (1024, 4096, 4, 64): TcConfig(bm=64, bnt=64, bk=128, split=16, num_warps=4, num_stages=4,
                                  scale_after=True),  # 14.1, 8.2, 17.3
    (4096, 4096, 4, 64): TcConfig(bm=64, bnt=64, bk=128, split=4, num_warps=4, num_stages=4,
                                  scale_after=True),  # 21.2, 14.9, 26.7
    (14336, 4096, 4, 64): TcConfig(bm=64, bnt=64, bk=128, split=1, num_warps=4, num_stages=4,
                                   scale_after=True),  # 44.5, 44.2, 58.9
    (4096, 14336, 4, 64): TcConfig(bm=64, bnt=64, bk=128, split=4, num_warps=4, num_stages=4,
                                   scale_after=True),  # 45.5, 47.5, 60.7
}

#: Code-book (NF4/FP4, "lut" mode) layers: their own tables, same keys (measured separately:
#: the code-book gather changes what hides latency best).
# NF4 b64 double-quant (benchmarks/results/h100_tune_tc_run4[ab].jsonl; our us, fp16 us): the
# GEMV gathers the code book from the program's copy (2x faster than a global load per code),
# M = 16 runs gemm_tc with the same gather (2x faster than gemm.py's); M = 256 dequantizes.
GEMV_LUT: dict[tuple[int, int, int], GemvConfig] = {
    (1024, 4096, 4): GemvConfig(chunks=1, split=16, num_warps=4, num_stages=1, prefetch=False, lut_reg=True),  # 6.7, 7.5
    (4096, 4096, 4): GemvConfig(chunks=1, split=8, num_warps=4, num_stages=1, prefetch=False, lut_reg=True),  # 11.4, 15.6
    (14336, 4096, 4): GemvConfig(chunks=1, split=2, num_warps=4, num_stages=1, prefetch=False, lut_reg=True),  # 24.4, 41.7
    (4096, 14336, 4): GemvConfig(chunks=1, split=8, num_warps=4, num_stages=1, prefetch=False, lut_reg=True),  # 25.6, 43.8
}
#: (N, K, bits) -> gemv_half2 config for code-book layers (NF4/FP4, fp16/bf16 activations, M = 1),
#: at the BLOCK_N above: benchmarks/results/h100_tune_half2_steps_s9run4.jsonl (NF4 b64 dq, fp16
#: absmax; our us, fp16 us, and the split-K config's before, h100_tune_half2_lut_run4.jsonl).
HALF2_LUT: dict[tuple[int, int, int], GemvConfig] = {
    # the first step decoded before the PDL wait (h100_tune_predecode_mma16_xstep_s10run2.jsonl: 2.64 us;
    # the best without, 16 chunks over 8 columns, 32 warps: 3.01)
    (1024, 4096, 4): GemvConfig(chunks=16, cols=16, num_warps=8, num_stages=1, prefetch=True, depth=1,
                                half2=True, predecode=True),  # 2.6, 7.6 (split-K 16: 4.7)
    (4096, 4096, 4): GemvConfig(chunks=8, cols=16, num_warps=16, num_stages=1, prefetch=True,
                                half2=True),  # 6.4, 15.9 (split-K 16: 7.7)
    (14336, 4096, 4): GemvConfig(chunks=4, cols=16, num_warps=8, num_stages=1, prefetch=True,
                                 half2=True),  # 17.0, 42.0 (split-K 4: 17.2)
    (4096, 14336, 4): GemvConfig(chunks=8, cols=16, num_warps=16, num_stages=1, prefetch=True,
                                 half2=True),  # 16.4, 43.6 (split-K 16: 17.8)
}
GEMM_LUT: dict[tuple[int, int, int, int], GemmConfig | DequantConfig | TcConfig] = {
    (1024, 4096, 4, 16): TcConfig(bm=16, bnt=64, bk=64, split=32, num_warps=4, num_stages=4, swap=True,
                                  scale_after=True),  # 9.6, 7.6
    (4096, 4096, 4, 16): TcConfig(bm=16, bnt=64, bk=64, split=8, num_warps=4, num_stages=4, swap=True,
                                  scale_after=True),  # 18.8, 16.0
    (14336, 4096, 4, 16): TcConfig(bm=16, bnt=128, bk=64, split=4, num_warps=4, num_stages=4, swap=True,
                                   scale_after=True),  # 50.3, 43.3
    (4096, 14336, 4, 16): TcConfig(bm=16, bnt=128, bk=64, split=16, num_warps=4, num_stages=4, swap=True,
                                   scale_after=True),  # 46.1, 45.0
}

#: (N, K, bits, M bucket) -> wgmma config (int4 groups >= 128 on a Hopper GPU), at the BLOCK_N
#: above; an entry also routes its M bucket to wgmma (from WGMMA_MIN_M rows). benchmarks/
#: results/h100_tune_wgmma_m64_256_run18.jsonl, h100_tune_wgmma_m16_32_128_run19.jsonl and
#: h100_tune_wgmma_m16_256_run21.jsonl (our us, fp16 us). PDL (``pdl``) only where it measured
#: faster: it made 4096x14336 (N = 14336) at M = 16 40% slower (run 26).
WGMMA: dict[tuple[int, int, int, int], WgmmaConfig] = {
    # a cluster of 8 K splits, launched load-balanced: 7.19 -> 6.14 us (s15 runs 10-11,
    # h100_wgmma_cluster_lb_m16_s15.txt); before it 128-column tiles of 8 warps, two
    # accumulators, 8 global splits (h100_wgmma_accs_s12run2.txt: 7.2 us; split 4 without PDL 9.3)
    (4096, 4096, 4, 16): WgmmaConfig(bm=16, codes=8, stages=2, split=8, accs=2, x16=True, pdl=True,
                                     cluster=True),  # 6.1, 15.7 (mma16 10.1)
    (4096, 4096, 4, 32): WgmmaConfig(bm=32, codes=4, stages=3, split=4),  # 11.2, 14.6
    # two K splits as a cluster (s15 run 5, h100_wgmma_cluster_m32_256_s15.txt): M = 64 12.35 ->
    # 10.92 us (global fp16 sums), M = 128 16.37 -> 13.88 (split 1)
    (4096, 4096, 4, 64): WgmmaConfig(bm=64, codes=4, stages=3, split=2, cluster=True),  # 10.9, 14.7
    (4096, 4096, 4, 128): WgmmaConfig(bm=64, codes=4, stages=3, split=2, cluster=True),  # 13.9, 15.0
    (4096, 4096, 4, 256): WgmmaConfig(bm=128, codes=4, stages=3, mmas=2),  # 18.2, 18.5 (run 21)
    # split 2, two accumulators, PDL (s12 runs 1 and 2: 17.7-18.2 us; split 1, one accumulator,
    # no PDL: 19.8)
    # x16: 17.68 -> 17.50 us (s13 run 1, h100_wgmma_x16_ab_s13run1.txt; it made 14336x4096 and
    # 4096x4096 slower, 15.34 -> 15.53 and 7.27 -> 7.97)
    # eight codes a stage: 17.64 -> 17.04 us (s14 run 2 sweep, h100_wgmma_sweep_m16_s14.txt)
    # the two K splits as a cluster, meeting in shared memory: 16.76 -> 15.31 us (s15 run 3,
    # h100_wgmma_cluster_m16_s15.txt; the global meeting cost 2.59 us, h100_splitk_cost_wgmma_s15.txt)
    (14336, 4096, 4, 16): WgmmaConfig(bm=16, codes=8, stages=2, split=2, accs=2, pdl=True, x16=True,
                                      cluster=True),  # 15.3, 42.4
    (14336, 4096, 4, 32): WgmmaConfig(bm=32, codes=2, stages=5, split=2, cluster=True),  # 21.3, 43.8 (split 1: 22.6, s15 run 5)
    (14336, 4096, 4, 64): WgmmaConfig(bm=64, codes=4, stages=3, split=1),  # 25.0, 45.0
    (14336, 4096, 4, 128): WgmmaConfig(bm=128, codes=4, stages=3, split=1),  # 31.9, 46.5
    (14336, 4096, 4, 256): WgmmaConfig(bm=256, codes=2, stages=3, split=1),  # 53.2, 51.8
    # with PDL 16.0 us (run 26: the next call's programs load their weights while this one
    # ends); PDL made the other shapes slower (4096x14336 M = 16: 19.5 -> 27.4 us)
    # a cluster of 8 K splits, launched load-balanced: 15.45 -> 14.95 us (s15 run 10)
    (4096, 14336, 4, 16): WgmmaConfig(bm=16, codes=4, stages=3, split=8, accs=2, pdl=True,
                                      cluster=True),  # 15.0, 43.4 (mma16 22.9)
    (4096, 14336, 4, 32): WgmmaConfig(bm=32, codes=2, stages=5, split=8),  # 20.7, 45.7
    (4096, 14336, 4, 64): WgmmaConfig(bm=64, codes=2, stages=5, split=4, half_sums=True),  # 23.7, 45.4 (s14 run 1)
    (4096, 14336, 4, 128): WgmmaConfig(bm=128, codes=4, stages=3, split=4, half_sums=True),  # 29.1, 51.1 (s14 run 2)
    # split 2 since the vector-atomic split-K (56.1 us against 59.4 at split 1, s8 run 7)
    (4096, 14336, 4, 256): WgmmaConfig(bm=128, codes=2, stages=5, split=2, half_sums=True),  # 52.1, 61.1 (s14 run 1)
    # four accumulators, three MMAs in flight: a program has one chunk, and its eight steps'
    # MMAs no longer wait on each other (s12 runs 1 and 2: 4.35-4.43 us; one accumulator 5.3-5.6)
    # (x16: 4.37 -> 4.26 us, s13 run 1)
    (1024, 4096, 4, 16): WgmmaConfig(bm=16, codes=8, stages=3, split=16, mmas=3, accs=4, pdl=True,
                                     x16=True),  # 4.26, 7.66 (mma16 8.1)
    (1024, 4096, 4, 32): WgmmaConfig(bm=32, codes=4, stages=3, split=8),  # 6.7, 7.8
    (1024, 4096, 4, 64): WgmmaConfig(bm=32, codes=4, stages=3, split=8, mmas=2, accs=4, pdl=True,
                                     half_sums=True),  # 6.2, 8.2 (s14 run 1; s12 run 2: 6.3)
    (1024, 4096, 4, 128): WgmmaConfig(bm=128, codes=4, stages=3, split=8, half_sums=True),  # 7.2, 8.4 (s14 run 2)
    # fp16 split-K sums: 11.13 -> 8.96 us (fp16 9.29; s14 run 1, h100_wgmma_half_sums_ab_s14run1.txt)
    (1024, 4096, 4, 256): WgmmaConfig(bm=128, codes=4, stages=3, split=4, half_sums=True),  # 9.0, 9.3
    # the decoder's merged q|k|v and gate|up at batch 16 (h100_tune_wgmma_merged_m16_run28.jsonl,
    # block 64; without PDL 11.5 and 31.2 us)
    (6144, 4096, 4, 16): WgmmaConfig(bm=16, codes=4, stages=3, split=4, pdl=True),  # 10.1, 21.1
    (28672, 4096, 4, 16): WgmmaConfig(bm=16, codes=4, stages=3, split=1, pdl=True),  # 29.9, 83.4
}
#: (N, K, bits, M bucket) -> wgmma config for code-book layers (NF4/FP4) where measured apart:
#: results/h100_tune_wgmma_lut_m16_s7run12/13.jsonl (NF4 b64 dq, --quick sweep; our us, fp16
#: us; with int4's configs 12.5 / 33.7 / 24.2 us, run 11). 4096x1024 keeps int4's (6.3 us).
WGMMA_LUT: dict[tuple[int, int, int, int], WgmmaConfig] = {
    (4096, 4096, 4, 16): WgmmaConfig(bm=16, codes=8, stages=4, split=8, mmas=2, pdl=True),  # 10.1, 16.1
    (14336, 4096, 4, 16): WgmmaConfig(bm=16, codes=8, stages=4, split=1, mmas=1),  # 31.9, 43.1
    (4096, 14336, 4, 16): WgmmaConfig(bm=16, codes=8, stages=4, split=8, mmas=2, pdl=True),  # 23.7, 44.8
}

#: Largest M that runs on the CUDA-core GEMV (above it the tensor-core kernel wins).
GEMV_MAX_M = 1
#: Largest M that runs on ``mma16`` (int4 groups >= 128; above it gemm_tc / dequantize).
#: Each 16 rows are one more program row; at M = 32 it still beat gemm_tc on all four shapes,
#: at 64 on none (benchmarks/results/h100_table_int4_m32_64_run14.txt).
MMA16_MAX_M = 32
#: M that run on ``wgmma`` where it can (Hopper, int4 groups >= 128) unless a measured table
#: says otherwise. Fewer rows: mma16 (at M = 2 the two tied, run 15 vs run 19; from M = 8
#: wgmma was faster on every measured shape). More rows: dequantize + cuBLAS (at M = 1024
#: that beat wgmma on every H100 shape, benchmarks/results/h100_table_int4_wgmma_run18.txt).
WGMMA_MIN_M = 8
WGMMA_MAX_M = 512
M_BUCKETS = (16, 32, 64, 128, 256)
#: Bytes of shared memory the GEMM's pipeline stages may take (H100: 227 KB a block).
SHARED_BUDGET = 160 * 1024
#: The same for gemm_tc, whose stages are counted exactly (H100: 227 KB; Triton reuses the
#: stages' memory for the epilogue).
TC_SHARED_BUDGET = 200 * 1024


def load_table(path: str) -> None:
    """Add the best configs written by ``benchmarks/kernels.py --tune`` (a JSON list)."""
    with open(path) as f:
        for e in json.load(f):
            key = (e["n"], e["k"], e["bits"])
            lut = e.get("mode") == "lut"
            gemm = GEMM_LUT if lut else GEMM
            if e["kind"] == "wgmma":
                (WGMMA_LUT if lut else WGMMA)[key + (m_bucket(e["m"]),)] = WgmmaConfig(**e["cfg"])
            elif e["kind"] == "mma16":
                MMA16[key] = Mma16Config(**e["cfg"])
                if "bn" in e:
                    BLOCK_N[key] = e["bn"]
            elif e["kind"] == "half2":
                (HALF2_LUT if lut else HALF2)[key] = GemvConfig(**e["cfg"])
                if "bn" in e and not lut:  # code-book layers are tuned at the int4 layer's block
                    BLOCK_N[key] = e["bn"]
            elif e["kind"] == "gemv":
                (GEMV_LUT if lut else GEMV)[key] = GemvConfig(**e["cfg"])
                if "bn" in e:
                    BLOCK_N[key] = e["bn"]
            elif e["kind"] == "dequant":
                gemm[key + (m_bucket(e["m"]),)] = DequantConfig(**e["cfg"])
            elif e["kind"] == "tc":
                gemm[key + (m_bucket(e["m"]),)] = TcConfig(**e["cfg"])
            else:
                gemm[key + (m_bucket(e["m"]),)] = GemmConfig(**e["cfg"])


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
    # per-column zero/scale work (64 measured best on most H100 shapes; 128 makes Triton
    # shuffle through shared memory); 32 for narrow layers so they spread over the SMs.
    return 64 if n >= 1024 else 32


def _fill_split(programs: int, chunks: int, sms: int, per_sm: int = 4) -> int:
    """Power-of-two K split giving about ``per_sm`` programs per SM (four is what the H100
    sweep favoured for gemv.py at M = 1: more of them hide each other's load latency), at
    most one per chunk."""
    split = 1
    while programs * split < per_sm * sms and split * 2 <= chunks:
        split *= 2
    return split


def gemv_config(n: int, k: int, bits: int, nb: int, chunks: int, device: torch.device,
                lut: bool = False) -> GemvConfig:
    table = GEMV_LUT if lut else GEMV
    if (n, k, bits) in table:
        return table[(n, k, bits)]
    # lut: the code book gathered from the program's copy was ~2x faster on every H100 shape.
    return GemvConfig(chunks=1, split=_fill_split(nb, chunks, _sms(device)) * (2 if lut else 1), num_warps=4,
                      num_stages=1, prefetch=False, lut_reg=lut)


def half2_config(n: int, k: int, nb: int, chunks: int, device: torch.device, lut: bool = False) -> GemvConfig:
    """gemv_half2 config (``lut``: code-book layers): measured, else a K split giving about
    eight programs per SM (the kernel needs ~55 registers a thread, so eight programs of
    four warps fit on an SM)."""
    table = HALF2_LUT if lut else HALF2
    if (n, k, 4) in table:
        return table[(n, k, 4)]
    return GemvConfig(split=_fill_split(nb, chunks, _sms(device), per_sm=8), num_warps=4, num_stages=1,
                      prefetch=True, half2=True)


def mma16_config(n: int, k: int, nb: int, chunks: int, device: torch.device) -> Mma16Config:
    """mma16 config: measured, else what won on the measured shapes: two warps over the
    column quads, two chunks in flight, a K split giving about four programs per SM."""
    if (n, k, 4) in MMA16:
        return MMA16[(n, k, 4)]
    return Mma16Config(split=_fill_split(nb, chunks, _sms(device), per_sm=4), wr=1, wh=2, depth=2)


def prefers_wgmma(m: int, n: int, k: int) -> bool:
    """Whether M rows of this shape go to ``wgmma`` (where it can take them): from
    WGMMA_MIN_M rows, as measured if the shape and M bucket are in the WGMMA or GEMM table,
    else up to WGMMA_MAX_M rows."""
    key = (n, k, 4, m_bucket(m))
    return m >= WGMMA_MIN_M and (key in WGMMA or (key not in GEMM and m <= WGMMA_MAX_M))


def wgmma_config(m: int, n: int, k: int, device: torch.device, lut: bool = False) -> WgmmaConfig:
    """wgmma config: measured (``lut``: on a code-book layer if measured there, else int4's),
    else what won on the measured shapes: one row tile of >= M rows under 64 rows, 128-row
    tiles when they fill the SMs (else 64), a K split until they do, and from 64 rows split
    sums met in fp16 (faster on every measured split config at M = 64-256, slower at 16)."""
    b = m_bucket(m)
    if lut and (n, k, 4, b) in WGMMA_LUT:
        return WGMMA_LUT[(n, k, 4, b)]
    if (n, k, 4, b) in WGMMA:
        return WGMMA[(n, k, 4, b)]
    if m < 64:
        bm = max(16, 1 << (m - 1).bit_length())
    else:
        bm = 128 if triton.cdiv(m, 128) * triton.cdiv(n, 64) >= _sms(device) else 64
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, 64)
    split = _fill_split(tiles, triton.cdiv(k, 256), _sms(device), per_sm=1)
    return WgmmaConfig(bm=bm, codes=4, stages=3, split=split, half_sums=m >= 64)


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


def fit_shared_tc(cfg: TcConfig, lut: bool) -> TcConfig:
    """Fewer stages when x tile + word tile (+ the code-book gather, which Triton pipelines
    through shared memory too) of a stage would overflow shared memory. A flat word tile
    holds BK rows of words (each word once per code it gives the step), else PK."""
    words = (cfg.bk if cfg.flat else PK) * cfg.bnt * 4
    stage = cfg.bm * cfg.bk * 2 + words + (cfg.bk * cfg.bnt * 4 if lut else 0)
    stages = cfg.num_stages
    while stages > 1 and stages * stage > TC_SHARED_BUDGET:
        stages -= 1
    return replace(cfg, num_stages=stages)


def tc_config(m: int, n: int, chunks: int, group_size: int, device: torch.device) -> TcConfig:
    """Heuristic gemm_tc config (M <= 64): split-K until the SMs are busy, and steps inside
    one group so the scale is applied once per output (what measured best)."""
    bk = 128 if group_size % 128 == 0 else 64
    if m <= 16:
        cfg = TcConfig(bm=16, bnt=64, bk=bk, num_warps=4, num_stages=4, swap=True, scale_after=True)
    else:
        cfg = TcConfig(bm=64, bnt=64, bk=bk, num_warps=4, num_stages=4, scale_after=True)
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bnt)
    split = 1
    while tiles * split < 2 * _sms(device) and split * 2 <= chunks:
        split *= 2
    return replace(cfg, split=split)


def gemm_config(m: int, n: int, k: int, bits: int, chunks: int, device: torch.device,
                lut: bool = False, group_size: int = 128) -> GemmConfig | DequantConfig | TcConfig:
    """M >= 2: the measured table, else int M <= 16 the slab kernel (gemm.py), code-book
    M <= 16 and any M <= 64 the tiled kernel (gemm_tc), larger M dequantize + cuBLAS (at
    M = 256 that beat both fused kernels on every H100 shape measured)."""
    b = m_bucket(m)
    table = GEMM_LUT if lut else GEMM
    if (n, k, bits, b) in table:
        return table[(n, k, bits, b)]
    if m > 64:
        return DequantConfig()
    if b <= 16 and not lut:
        cfg = GemmConfig(bm=16, bnt=64, num_warps=4, num_stages=3, swap=True)
        tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bnt)
        return _fit_shared(replace(cfg, split=_fill_split(tiles, chunks, _sms(device))), bits)
    return tc_config(m, n, chunks, group_size, device)
