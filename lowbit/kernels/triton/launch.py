"""Launchers: PackedWeight + activations [M, K] -> output [M, N], with an explicit config.

Configs are plain data (``GemvConfig``, ``GemmConfig``); ``configs.py`` picks them per shape.
The split-K workspace (float32) and tile counters are allocated once per device and
stream, zero-filled, and left zeroed by the kernels themselves (see ``epilogue``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import torch
import triton

from . import cluster as _cluster
from . import pdl
from .dequant import dequant_kernel
from .gemm import int_gemm_kernel
from .gemm_tc import int_gemm_tc_kernel
from .gemv import int_gemv_kernel
from .gemv_half2 import int4_gemv_half2_kernel
from . import mma16 as _mma16
from . import wgmma as _wgmma
from .layout import PK, PackedWeight, half2_accumulators


@dataclass(frozen=True)
class GemvConfig:
    chunks: int = 1  # C: chunks of PK words decoded per loop step (gemv_half2: a power of two)
    split: int = 1  # K splits (programs per column block)
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = True  # load the next step's words before decoding this step's
    lut_reg: bool = False  # lut mode: gather codes from a per-program copy of the code book
    half2: bool = False  # int4 codes, fp16/bf16 rows: the f16x2 kernel (gemv_half2)
    depth: int = 1  # gemv_half2 with prefetch: steps loaded ahead (1 or 2)
    cols: int = 0  # gemv_half2: output columns a program, a divisor of block_n (0: block_n)
    # gemv_half2 with prefetch: decode the first step's codes before the PDL wait (code books,
    # int4 with one group pair a chunk)
    predecode: bool = False


@dataclass(frozen=True)
class GemmConfig:
    bm: int = 16
    bnt: int = 64
    split: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap: bool = False
    group_m: int = 8


@dataclass(frozen=True)
class Mma16Config:
    """``mma16`` (2 <= M <= 16, int4, fp16): a loop step of ``chunks`` chunks side by side
    (a power of two) over ``cols`` of a layout block's columns (0: the whole block), ``v``
    columns a lane (1, 2 or 4) and K splits; the warps: ``wc`` over the step's chunks, ``wr``
    over the two 16-row halves of a chunk (1 or 2), ``wh`` over its column groups of 8 v."""

    split: int = 1
    wr: int = 1
    wh: int = 1
    depth: int = 2  # steps loaded ahead (1 or 2)
    chunks: int = 1
    wc: int = 1
    v: int = 4
    cols: int = 0


@dataclass(frozen=True)
class TcConfig:
    """``gemm_tc``: BM x BNT output tiles, BK-deep steps (a power of two from 32 up to a
    chunk); ``scale_after`` needs BK to divide the group size (else ignored)."""

    bm: int = 64
    bnt: int = 128
    bk: int = 64
    split: int = 1
    num_warps: int = 4
    num_stages: int = 3
    swap: bool = False
    group_m: int = 8
    scale_after: bool = False
    flat: bool = False  # decode the [BK, BNT] tile in place (each word loaded once per code)


@dataclass(frozen=True)
class WgmmaConfig:
    """``wgmma`` (many rows, int4, Hopper): programs of ``bm`` activation rows x ``bnw``
    weight columns (a multiple of 16 * num_warps), x staged ``codes`` steps (32 columns
    each) a TMA copy, ``stages`` copies in flight."""

    bm: int = 128
    bnw: int = 64
    codes: int = 2
    stages: int = 4
    num_warps: int = 4
    split: int = 1  # K splits
    mmas: int = 1  # MMAs in flight (1 to 3, at most ``codes``)
    accs: int = 1  # accumulators the steps take in turn (1, 2 or 4; more let more MMAs overlap)
    # int4: odd code positions decoded as 16 times the weight (into the odd accumulators, scaled
    # back at the end): no shifts, 15-20% fewer loop instructions; faster for some shapes only
    x16: bool = False
    # programmatic dependent launch: faster for some shapes, much slower for others (run 26)
    pdl: bool = False
    # split-K, int4 codes, fp16 x: the splits' sums meet as fp16 (8 an atomic, not 4 float32): half
    # the atomics and bytes of the meeting, for at most about one fp16 rounding a split more error
    half_sums: bool = False
    # the ``split`` K splits of a tile as one thread-block cluster, meeting in distributed shared
    # memory (``cluster``) instead of global atomics; split 2, 4, 8 or 16, dividing ``bnw``, and
    # (the first meeting, which reuses the x ring) the float32 [bnw, bm] tile must fit there
    cluster: bool = False
    # the cluster meeting on st.async: slots of its own past the compiler's shared memory,
    # bytes counted on an mbarrier, one cluster barrier and no fence (``cluster``); compiled and
    # SASS-checked offline in session 16, not yet run on a GPU (no device came): no table
    # config uses it
    meet_async: bool = False
    # registers a thread at most (ptxas ``.maxnreg``; None: the compiler's choice). Fewer
    # registers fit more CTAs an SM, so that under PDL the next call's CTAs can all start and
    # load their weights while this call runs: 4096x1024 M = 16's table config (256 CTAs) takes
    # 149 (ptxas -v; 3 CTAs of 4 warps an SM), 112 fits 4 with nothing spilled (compiled offline,
    # tests/kernels/test_wgmma_sass.py); session 17, not yet timed on a GPU. Not monotonic:
    # 128 (also 4 CTAs) and 124 spill (37 and 83 LDL/STL), 120 takes 112 and spills nothing (s18)
    maxnreg: int | None = None
    # int4, codes=8, where a program gets one chunk (K splits = chunks, e.g. 4096x1024 at 16):
    # all 8 code positions decoded before the PDL wait, so that after it (on the critical
    # path) only x's copy, 16 MMAs in flight at once and the meeting remain; elsewhere the loop
    # runs as usual. Session 19, compiled offline, not yet run on a GPU: no table config uses it
    predecode: bool = False

    @staticmethod
    def one_chunk(per: int, lut: bool) -> bool:
        """Whether a launch whose programs get ``per`` chunks each can take ``predecode``'s path:
        one chunk a program, int4 (not a code book)."""
        return per == 1 and not lut

    @classmethod
    def valid(cls, **fields) -> bool:
        """Whether ``fields`` make a config: the rules live in ``__post_init__`` only, and a
        sweep (benchmarks/tune_kernels.py) filters its candidates by them."""
        try:
            cls(**fields)
        except ValueError:
            return False
        return True

    def __post_init__(self):
        if self.maxnreg is not None and not 24 <= self.maxnreg <= 255:
            raise ValueError(f"WgmmaConfig.maxnreg={self.maxnreg}: registers a thread must be 24 to 255 "
                             f"(or None for the compiler's choice)")
        if self.mmas not in (1, 2, 3):
            raise ValueError(f"WgmmaConfig.mmas={self.mmas}: MMAs in flight must be 1, 2 or 3")
        if self.accs not in (1, 2, 4):
            raise ValueError(f"WgmmaConfig.accs={self.accs}: accumulators must be 1, 2 or 4")
        if self.predecode and self.codes != 8:
            raise ValueError(f"WgmmaConfig(predecode=True, codes={self.codes}): decoding a chunk ahead needs "
                             f"codes=8 (its x in one stage)")
        if self.x16 and self.accs == 1:
            raise ValueError("WgmmaConfig.x16 needs accs=2 or 4: the odd code positions have accumulators of their own")
        if self.meet_async and not (self.cluster and self.bnw % (16 * self.num_warps) == 0):
            raise ValueError(f"WgmmaConfig(meet_async=True, cluster={self.cluster}, bnw={self.bnw}, "
                             f"num_warps={self.num_warps}): the st.async meeting is a cluster's (cluster=True) "
                             f"and needs bnw a multiple of 16 * num_warps (each sum on one thread)")
        if self.cluster:
            if self.split not in _cluster.SIZES or self.bnw % self.split:
                raise ValueError(f"WgmmaConfig(cluster=True, split={self.split}, bnw={self.bnw}): a cluster is "
                                 f"2, 4, 8 or 16 K splits dividing bnw")
            if not self.meet_async and not _wgmma.cluster_fits(self.bnw, self.codes, self.stages):
                raise ValueError(f"WgmmaConfig(cluster=True, bnw={self.bnw}, codes={self.codes}, "
                                 f"stages={self.stages}): the float32 tile needs bnw * 2 <= stages * codes * 32 "
                                 f"(its shared memory is the x ring's)")


#: Compiled handle of the last gemm_tc launch (for benchmarks/tune_tc.py --inspect).
LAST_TC = None

#: Triton's CPU interpreter: kernels then take their pure-Triton paths instead of PTX.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: 2^23 as float32 bits, passed at run time (see ``epilogue.decode_slab``).
MAGIC = 0x4B000000

@dataclass(frozen=True)
class DequantConfig:
    """Large M: dequantize to x's dtype once, then cuBLAS (``dequant_matmul``)."""

    num_warps: int = 4


_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MAX_TILES = 1 << 16


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def splitk_buffers(device: torch.device, numel: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(float32 workspace >= numel, int32 counters >= tiles), all zero; None if they would
    have to grow during CUDA-graph capture (the caller then runs without split-K).

    One pair per device, shared by every layer: kernels on one stream run one after the
    other, and each leaves the pair zeroed. (Two streams running split-K kernels at the
    same time on one device would mix their sums; lowbit runs its layers on one stream.)
    """
    key = str(device)
    have = _WORKSPACE.get(key)
    if have is not None and have[0].numel() >= numel and have[1].numel() >= tiles:
        return have
    if _capturing(device) or tiles > _MAX_TILES:
        return None
    size = max(numel, 2 * have[0].numel() if have is not None else 1 << 16)
    have = (torch.zeros(size, dtype=torch.float32, device=device), torch.zeros(_MAX_TILES, dtype=torch.int32, device=device))
    _WORKSPACE[key] = have
    return have


def reserve_splitk(device: torch.device, numel: int) -> None:
    """Grow the split-K workspace ahead of CUDA-graph capture (for M * N up to ``numel``)."""
    splitk_buffers(device, numel, 1)


def _common(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None):
    dummy = pw.qweight  # a valid pointer for absent optional tensors (never read)
    return dict(
        s_ptr=pw.scales,
        z_ptr=pw.zeros if pw.zeros is not None else dummy,
        perm_ptr=pw.perm if pw.perm is not None else dummy,
        lut_ptr=pw.lut if pw.lut is not None else dummy,
        bias_ptr=bias if bias is not None else dummy,
        MODE_LUT=pw.mode == "lut", HAS_ZERO=pw.zeros is not None, HAS_PERM=pw.perm is not None,
        HAS_BIAS=bias is not None,
    )


def _even_k(pw: PackedWeight) -> bool:
    return pw.k % (pw.codes_per_word * PK) == 0


def _splits(kc: int, split: int, align: int) -> tuple[int, int]:
    """(chunks per split, number of splits) for ``split`` requested splits of ``kc`` chunks."""
    per = triton.cdiv(triton.cdiv(kc, max(split, 1)), align) * align
    return per, triton.cdiv(kc, per)


def _split_k(x: torch.Tensor, y: torch.Tensor, numel: int, tiles: int, steps: int, split: int,
             align: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(steps per split, splits, workspace, counters) for ``split`` requested splits of
    ``steps`` K-steps, over ``tiles`` output tiles of ``numel`` sums in all. Without split-K
    (one split, or buffers that would have to grow during CUDA-graph capture) the kernel
    gets y for both pointers, which it then never touches."""
    per, split = _splits(steps, split, align)
    bufs = splitk_buffers(x.device, numel, tiles) if split > 1 else None
    if split > 1 and bufs is None:
        per, split = steps, 1
    ws, cnt = bufs if bufs is not None else (y, y)
    return per, split, ws, cnt


def gemv(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: GemvConfig,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias), one program row per activation row."""
    m = x.shape[0]
    y = torch.empty(m, pw.n, dtype=x.dtype, device=x.device) if out is None else out
    nb = pw.qweight.shape[0]
    per, split, ws, cnt = _split_k(x, y, m * pw.n, m * nb, pw.chunks, cfg.split, cfg.chunks)
    jr = min(pw.group_size // PK, pw.codes_per_word)
    even_c = per % cfg.chunks == 0 and pw.chunks % per == 0
    int_gemv_kernel[(nb, split, m)](
        x, pw.qweight, y_ptr=y, ws_ptr=ws, cnt_ptr=cnt,
        M=m, N=pw.n, K=pw.k, KC=pw.chunks, G=pw.groups, stride_xm=x.stride(0), stride_ym=y.stride(0),
        chunks_per_split=per, splits=split, magic=MAGIC, BITS=pw.bits, BN=pw.block_n, PK=PK, C=cfg.chunks,
        GS=pw.group_size, JR=jr, SPLIT_K=split > 1, EVEN_K=_even_k(pw), EVEN_C=even_c, PREFETCH=cfg.prefetch,
        LUT_REG=cfg.lut_reg and pw.mode == "lut",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_common(x, pw, bias),
        # Code-book layers measured slower with PDL (H100 run 10, NF4 b64 M = 1: 12.0 / 29.8 /
        # 29.3 / 8.0 us against 11.0 / 24.5 / 25.6 / 6.6 us without, run 4); int codes faster.
        **(pdl.launch_args(x.device) if pw.mode != "lut" else dict(PDL=False)),
    )
    return y


def int4_ok(x: torch.Tensor, pw: PackedWeight) -> bool:
    """int4 affine codes (zero terms repacked if there are zeros), fp16/bf16 activations."""
    return pw.mode == "int" and pw.bits == 4 and x.dtype in (torch.float16, torch.bfloat16) and (pw.zeros is None) == (
        pw.zero_pairs is None)


def lut4_ok(x: torch.Tensor, pw: PackedWeight) -> bool:
    """A 16-entry code book (NF4/FP4, with its lane table), fp16/bf16 activations."""
    return pw.mode == "lut" and pw.bits == 4 and pw.lanes is not None and x.dtype in (torch.float16, torch.bfloat16)


def half2_ok(x: torch.Tensor, pw: PackedWeight) -> bool:
    """Whether ``gemv_half2`` takes this input: int4 affine codes or a 16-entry code book
    (NF4/FP4), fp16/bf16 activations."""
    return int4_ok(x, pw) or lut4_ok(x, pw)


def _x_vec(x: torch.Tensor, pw: PackedWeight) -> bool:
    """Whether gemv_half2 may read x four halves (8 bytes) at a time: rows aligned to 8
    bytes, K a multiple of 4, no act-order gather."""
    return pw.perm is None and pw.k % 4 == 0 and x.stride(0) % 4 == 0 and x.data_ptr() % 8 == 0


def half2_step(cfg: GemvConfig, pw: PackedWeight) -> tuple[int, int]:
    """(chunks a loop step, columns a program) of ``gemv_half2`` as it can take them: a power
    of two, at most the layer's chunks; a divisor of block_n that keeps gate|up pairs whole
    (even), else the whole block."""
    c = 1
    while c * 2 <= min(cfg.chunks, pw.chunks):
        c *= 2
    bnp = cfg.cols if cfg.cols and pw.block_n % cfg.cols == 0 and cfg.cols % 2 == 0 else pw.block_n
    return c, bnp


def predecodes(cfg: GemvConfig, pw: PackedWeight) -> bool:
    """Whether ``gemv_half2`` decodes each step's codes ahead of its FMAs (the first step's
    before the PDL wait): asked for, with prefetch, on a code book or int4 groups >= 128
    (whose four code pairs share one zero term)."""
    return cfg.predecode and cfg.prefetch and (pw.mode == "lut" or half2_accumulators(pw.group_size) == 1)


def gemv_half2(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: GemvConfig,
               out: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias) in f16x2 arithmetic (``gemv_half2``; int4 or a
    code book), one program row per activation row (cfg: split, chunks, cols, num_warps,
    num_stages, prefetch depth). ``silu``: W's rows interleave gate and up (N even, block_n
    even), y [M, N / 2] = silu(gate) * up."""
    m = x.shape[0]
    y = torch.empty(m, pw.n // 2 if silu else pw.n, dtype=x.dtype, device=x.device) if out is None else out
    c, bnp = half2_step(cfg, pw)
    programs = pw.qweight.shape[0] * (pw.block_n // bnp)
    per, split, ws, cnt = _split_k(x, y, m * pw.n, m * programs, pw.chunks, cfg.split, c)
    dummy = pw.qweight
    int4_gemv_half2_kernel[(programs, split, m)](
        x, pw.qweight, pw.scales, pw.zero_pairs if pw.zero_pairs is not None else dummy,
        pw.perm if pw.perm is not None else dummy, pw.lanes if pw.lanes is not None else dummy,
        bias if bias is not None else dummy, y, ws, cnt,
        M=m, N=pw.n, K=pw.k, KC=pw.chunks, G=pw.groups, stride_xm=x.stride(0), stride_ym=y.stride(0),
        chunks_per_split=per, splits=split, BN=pw.block_n, BNP=bnp, C=c, PK=PK, GS=pw.group_size,
        NACC=half2_accumulators(pw.group_size), SPLIT_K=split > 1, LUT=pw.mode == "lut",
        EVEN_K=_even_k(pw) and pw.chunks % c == 0,  # else the last step's extra chunks mask x
        X_VEC=_x_vec(x, pw),
        HAS_ZERO=pw.zero_pairs is not None, HAS_PERM=pw.perm is not None, HAS_BIAS=bias is not None,
        PREFETCH=cfg.depth if cfg.prefetch else 0, INTERPRET=INTERPRET, SILU=silu,
        PREDECODE=predecodes(cfg, pw), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **pdl.launch_args(x.device),
    )
    return y


def disable_mma16() -> None:
    """Stop using ``mma16`` in this process (it did not compile with this Triton)."""
    _mma16.AVAILABLE = False


def mma16_ok(x: torch.Tensor, pw: PackedWeight, max_m: int = 16) -> bool:
    """Whether ``mma16`` takes this input: 2..max_m fp16/bf16 rows on a CUDA device (a Gluon
    kernel: no interpreter), int4 affine codes in groups >= 128, no act-order, rows it may
    read 8 bytes at a time, column blocks of 32."""
    return (_mma16.AVAILABLE and not INTERPRET and x.is_cuda and int4_ok(x, pw) and 2 <= x.shape[0] <= max_m
            and pw.group_size >= 128 and pw.block_n % 32 == 0 and _x_vec(x, pw))


def mma16_step(cfg: Mma16Config, pw: PackedWeight) -> Mma16Config:
    """``cfg`` as ``mma16`` can take it on this layer: chunks a step a power of two, at most
    the layer's chunks; columns a lane 1, 2 or 4, and columns a program a divisor of
    block_n made of a power-of-two number of 8 v column groups (else the whole block); the
    warps' split of the chunks and the column groups divisors of theirs."""
    c = 1
    while c * 2 <= min(cfg.chunks, pw.chunks):
        c *= 2
    v = cfg.v if cfg.v in (1, 2, 4) else 4
    bnp = cfg.cols if cfg.cols and pw.block_n % cfg.cols == 0 else pw.block_n
    groups = bnp // (8 * v)
    if bnp % (8 * v) or groups & (groups - 1):
        v, bnp = 4, pw.block_n
        groups = bnp // 32
    return replace(cfg, chunks=c, v=v, cols=bnp, wc=cfg.wc if c % cfg.wc == 0 else 1,
                   wh=cfg.wh if groups % cfg.wh == 0 else 1, wr=cfg.wr if cfg.wr in (1, 2) else 1)


def mma16(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: Mma16Config,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias) on mma.sync (``mma16``), 16 rows a program."""
    m = x.shape[0]
    y = torch.empty(m, pw.n, dtype=x.dtype, device=x.device) if out is None else out
    cfg = mma16_step(cfg, pw)
    programs = pw.qweight.shape[0] * (pw.block_n // cfg.cols)
    row_tiles = triton.cdiv(m, 16)
    per, split, ws, cnt = _split_k(x, y, m * pw.n, programs * row_tiles, pw.chunks, cfg.split, cfg.chunks)
    dummy = pw.qweight
    _mma16.int4_mma16_kernel[(programs, split, row_tiles)](
        x, pw.qweight, pw.scales, pw.zero_pairs if pw.zero_pairs is not None else dummy,
        bias if bias is not None else dummy, y, ws, cnt,
        m, pw.n, pw.k, pw.chunks, pw.groups, x.stride(0), y.stride(0), per, split,
        BN=pw.block_n, BNP=cfg.cols, C=cfg.chunks, V=cfg.v, PK=PK, GS=pw.group_size, SPLIT_K=split > 1,
        EVEN_K=_even_k(pw), HAS_ZERO=pw.zero_pairs is not None, HAS_BIAS=bias is not None, WC=cfg.wc, WR=cfg.wr,
        WH=cfg.wh, DEPTH=cfg.depth, X_BF16=x.dtype == torch.bfloat16,
        num_warps=cfg.wc * cfg.wr * cfg.wh, **pdl.launch_args(x.device),
    )
    return y


def disable_wgmma() -> None:
    """Stop using ``wgmma`` in this process (it did not compile with this Triton)."""
    _wgmma.AVAILABLE = False


@functools.lru_cache(maxsize=None)
def _hopper(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


def wgmma_ok(x: torch.Tensor, pw: PackedWeight) -> bool:
    """Whether ``wgmma`` takes this input: a Hopper GPU (warpgroup MMA is sm_90 only), int4
    affine codes in groups >= 128 or a code book in blocks >= 64, no act-order, fp16/bf16
    rows TMA can read (16-byte aligned, K a multiple of 8, contiguous)."""
    codes = (int4_ok(x, pw) and pw.group_size >= 128) or (lut4_ok(x, pw) and pw.group_size >= 64)
    return (_wgmma.AVAILABLE and not INTERPRET and x.is_cuda and _hopper(x.device.index) and codes
            and pw.perm is None and pw.k % 8 == 0 and x.is_contiguous() and x.data_ptr() % 16 == 0)


def wgmma(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: WgmmaConfig,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias) on warpgroup MMA (``wgmma``)."""
    m = x.shape[0]
    y = torch.empty(m, pw.n, dtype=x.dtype, device=x.device) if out is None else out
    dummy = pw.qweight
    grid = (triton.cdiv(m, cfg.bm), triton.cdiv(pw.n, cfg.bnw))
    red = wgmma_red(cfg, x, pw)
    kwargs = dict(
        BN=pw.block_n, BNW=cfg.bnw, BM=cfg.bm, GS=pw.group_size, STAGES=cfg.stages, CODES=cfg.codes,
        MMAS=min(cfg.mmas, cfg.codes), ACCS=cfg.accs, X16=cfg.x16 and pw.mode != "lut", RED=red,
        HAS_ZERO=pw.zeros is not None, HAS_BIAS=bias is not None,
        HALF_MATH=x.dtype == torch.float16 and pw.scales.dtype == torch.float16, LUT=pw.mode == "lut",
        num_warps=cfg.num_warps,
        **(pdl.launch_args(x.device) if cfg.pdl else dict(PDL=False)),
        **({} if cfg.maxnreg is None else dict(maxnreg=cfg.maxnreg)),
    )

    def args(per, split, ws, cnt):
        return (_wgmma.x_descriptor(x, cfg.bm, cfg.codes), pw.qweight, pw.scales,
                pw.zeros if pw.zeros is not None else dummy, pw.lanes if pw.lanes is not None else dummy,
                bias if bias is not None else dummy, y, ws, cnt,
                m, pw.n, pw.chunks, pw.groups, y.stride(0), per, split)

    # a cluster of ``split`` CTAs a tile (the grid counts clusters), no workspace; False where
    # this Triton cannot launch one (then the same config meets in global memory)
    def one_chunk(per):  # ``WgmmaConfig.predecode`` where it applies
        return cfg.predecode and WgmmaConfig.one_chunk(per, pw.mode == "lut")

    per = triton.cdiv(pw.chunks, cfg.split)
    if cfg.cluster and _cluster.launch(_wgmma.int4_wgmma_kernel, grid + (1,), cfg.split, *args(per, 1, y, y),
                                       extra_shared=_cluster.meeting_bytes(cfg.bnw, cfg.bm) if cfg.meet_async else 0,
                                       SPLIT_K=False, CLUSTER=cfg.split, MEET_ASYNC=cfg.meet_async,
                                       ONE_CHUNK=one_chunk(per), **kwargs):
        return y
    per, split, ws, cnt = _split_k(x, y, m * pw.n, grid[0] * grid[1], pw.chunks, cfg.split, 1)
    if split > 1 and red == 8:
        ws = ws.view(torch.float16)  # the zeroed float32 workspace holds twice the fp16 sums
    _wgmma.int4_wgmma_kernel[grid + (split,)](*args(per, split, ws, cnt), SPLIT_K=split > 1, CLUSTER=1, MEET_ASYNC=False,
                                                  ONE_CHUNK=one_chunk(per), **kwargs)
    return y


def wgmma_red(cfg: WgmmaConfig, x: torch.Tensor, pw: PackedWeight) -> int:
    """How ``wgmma``'s K splits add their sums: 8 fp16 or 4 float32 adjacent columns a vector
    atomic (16-byte aligned rows: N a multiple of 8 or 4), else 1 float32 an atomic. fp16
    sums for int4 codes only: code-book layers were neither timed nor GPU-tested with them."""
    if cfg.half_sums and x.dtype == torch.float16 and pw.n % 8 == 0 and pw.mode == "int":
        return 8
    return 4 if pw.n % 4 == 0 else 1


def gemm(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: GemmConfig,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias) on tensor cores (x fp16 or bf16)."""
    m = x.shape[0]
    y = torch.empty(m, pw.n, dtype=x.dtype, device=x.device) if out is None else out
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(pw.n, cfg.bnt)
    per, split, ws, cnt = _split_k(x, y, m * pw.n, tiles, pw.chunks, cfg.split, 1)
    jr = min(pw.group_size // PK, pw.codes_per_word)
    int_gemm_kernel[(tiles, split)](
        x, pw.qweight, y_ptr=y, ws_ptr=ws, cnt_ptr=cnt,
        M=m, N=pw.n, K=pw.k, KC=pw.chunks, G=pw.groups, stride_xm=x.stride(0), stride_ym=y.stride(0),
        chunks_per_split=per, splits=split, magic=MAGIC, BITS=pw.bits, BN=pw.block_n, PK=PK,
        GS=pw.group_size, JR=jr, EVEN_K=_even_k(pw), BM=cfg.bm, BNT=cfg.bnt, GROUP_M=cfg.group_m, SPLIT_K=split > 1, SWAP=cfg.swap,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_common(x, pw, bias),
    )
    return y


def tc_shape(cfg: TcConfig, pw: PackedWeight) -> tuple[int, int]:
    """(BNT, BK) as the kernel can take them for this layout: BNT a multiple of the layout's
    column block times a power of two, BK a power of two between PK and a chunk."""
    blocks = -(-max(cfg.bnt, pw.block_n) // pw.block_n)
    bnt = pw.block_n << (blocks - 1).bit_length()
    bk = min(max(cfg.bk, PK), pw.codes_per_word * PK)
    return bnt, bk


def gemm_tc(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: TcConfig,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias): tiled tensor-core kernel (``gemm_tc``), x fp16/bf16."""
    m = x.shape[0]
    y = torch.empty(m, pw.n, dtype=x.dtype, device=x.device) if out is None else out
    bnt, bk = tc_shape(cfg, pw)
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(pw.n, bnt)
    steps = pw.chunks * (pw.codes_per_word * PK // bk)
    per, split, ws, cnt = _split_k(x, y, m * pw.n, tiles, steps, cfg.split, 1)
    nb = pw.qweight.shape[0]
    half = x.dtype == torch.float16 and pw.scales.dtype == torch.float16
    one_group = pw.group_size % bk == 0
    global LAST_TC
    LAST_TC = int_gemm_tc_kernel[(tiles, split)](
        x, pw.qweight, y_ptr=y, ws_ptr=ws, cnt_ptr=cnt,
        M=m, N=pw.n, K=pw.k, KC=pw.chunks, NB=nb, G=pw.groups, stride_xm=x.stride(0), stride_ym=y.stride(0),
        steps_per_split=per, splits=split, BITS=pw.bits, BN=pw.block_n, PK=PK, GS=pw.group_size,
        EVEN_K=_even_k(pw), EVEN_N=nb % (bnt // pw.block_n) == 0, BM=cfg.bm, BNT=bnt, BK=bk, GROUP_M=cfg.group_m,
        SPLIT_K=split > 1, SWAP=cfg.swap, SCALE_AFTER=cfg.scale_after and one_group, HALF_MATH=half,
        FLAT=cfg.flat, ONE_GROUP=one_group,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_common(x, pw, bias),
    )
    return y


def dequant_matmul(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None, cfg: DequantConfig) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W.T (+ bias): W^T decoded into x's dtype, then one cuBLAS matmul."""
    wt = torch.empty(pw.k, pw.n, dtype=x.dtype, device=x.device)  # [K, N], kernel order
    dequant_kernel[(pw.qweight.shape[0], pw.chunks)](
        pw.qweight, pw.scales, pw.zeros if pw.zeros is not None else pw.qweight,
        pw.lut if pw.lut is not None else pw.qweight, wt, N=pw.n, K=pw.k, KC=pw.chunks, G=pw.groups, magic=MAGIC,
        BITS=pw.bits, BN=pw.block_n, PK=PK, GS=pw.group_size, MODE_LUT=pw.mode == "lut",
        HAS_ZERO=pw.zeros is not None, num_warps=cfg.num_warps,
    )
    if pw.perm is not None:
        x = x.index_select(1, pw.perm)  # kernel order of the columns
    y = torch.mm(x, wt)
    return y if bias is None else y + bias.to(y.dtype)
