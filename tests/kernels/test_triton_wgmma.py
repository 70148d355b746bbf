"""The warpgroup-MMA int4 kernel for many rows (wgmma, Gluon, Hopper) vs kernels/reference.py.

Gluon kernels do not run under TRITON_INTERPRET and wgmma exists on sm_90 only, so the
numbers are checked on an H100 (the device tool); on CPU the dispatch rules are, and
tests/kernels/test_wgmma_sass.py compiles the kernel offline.
"""
from __future__ import annotations

import collections
import importlib
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import nf4_layers
from int_layers import check, make_layer, ref_out, repack

pytestmark = pytest.mark.usefixtures("one_thread")
hopper = pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9),
                            reason="warpgroup MMA: Hopper GPUs only (no interpreter)")


@hopper
@pytest.mark.parametrize("m,gs,sym,n,k,bn,bm,bnw,codes,stages,warps,split,dtype", [
    (256, 128, False, 256, 1024, 64, 128, 64, 2, 4, 4, 1, torch.float16),
    (100, 128, True, 200, 768, 32, 64, 64, 1, 3, 4, 1, torch.float16),  # ragged M and N, bias, K % 256 != 0
    (300, -1, False, 128, 512, 64, 256, 64, 2, 3, 4, 1, torch.float16),  # per channel, two row tiles
    (64, 256, False, 256, 2048, 32, 64, 128, 2, 4, 4, 1, torch.float16),  # two MMA row blocks a warp, blocks of 32
    (129, 128, False, 256, 1024, 64, 128, 128, 4, 3, 8, 1, torch.float16),  # two warpgroups, two TMA boxes a stage
    (256, 128, False, 128, 1024, 64, 128, 64, 8, 3, 4, 1, torch.float16),  # four boxes a stage
    (192, 128, False, 128, 1024, 64, 128, 64, 2, 4, 4, 1, torch.bfloat16),
    (70, 128, True, 64, 520, 64, 64, 64, 1, 2, 4, 1, torch.bfloat16),
    (200, 128, False, 192, 3072, 64, 128, 64, 4, 3, 4, 4, torch.float16),  # split-K (12 chunks in 4 splits)
    (65, 128, False, 64, 1280, 32, 64, 64, 2, 4, 4, 3, torch.bfloat16),  # split-K, uneven splits (5 chunks)
    (16, 128, False, 128, 2048, 64, 16, 64, 8, 3, 4, 2, torch.float16),  # 16-row tiles, a chunk a stage
    (40, 128, False, 90, 1024, 32, 64, 64, 2, 3, 4, 4, torch.float16),  # split-K, N % 4 != 0: one atomic a sum
    (33, 128, False, 192, 2048, 64, 64, 64, 2, 3, 4, 8, torch.float16),  # split-K, 8 splits of a chunk, red.v4
    (9, 128, True, 96, 1024, 32, 16, 64, 2, 5, 4, 1, torch.bfloat16),
    (30, 256, False, 64, 768, 64, 32, 64, 2, 3, 4, 1, torch.float16),
])
# accs: accumulators the steps take in turn, summed at the end; x16: the odd code positions
# decoded as 16 times the weight into their own accumulators
@pytest.mark.parametrize("mmas,pdl,accs,x16", [(1, False, 1, False), (2, True, 2, False), (2, True, 2, True),
                                               (3, False, 4, True)])
def test_wgmma_matches_reference(tk, m, gs, sym, n, k, bn, bm, bnw, codes, stages, warps, split, dtype, mmas,
                                 pdl, accs, x16):
    layer = make_layer(n, k, 4, gs, sym, bias=m == 100, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, bn)
    assert tk.launch.wgmma_ok(x, pw)
    cfg = tk.launch.WgmmaConfig(bm=bm, bnw=bnw, codes=codes, stages=stages, num_warps=warps, split=split,
                                mmas=mmas, pdl=pdl, accs=accs, x16=x16)
    check(tk.launch.wgmma(x, pw, layer.bias, cfg), ref_out(x, layer), x)
    if split > 1:  # the workspace is left zeroed for the next call: the same sums again
        check(tk.launch.wgmma(x, pw, layer.bias, cfg), ref_out(x, layer), x)


@hopper
@pytest.mark.parametrize("m,n,k,bm,codes,split", [
    (16, 256, 2048, 16, 4, 8),  # 16-row tiles, 8 splits of a chunk
    (200, 192, 3072, 128, 4, 4),  # 12 chunks in 4 splits, ragged M, bias
    (33, 136, 2048, 64, 2, 3),  # uneven splits, N % 64 != 0 (a part-filled column tile)
])
def test_wgmma_half_sums_stay_within_a_rounding_a_split_of_float32_sums(tk, m, n, k, bm, codes, split):
    layer = make_layer(n, k, 4, 128, False, bias=m == 200, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).half()
    pw = repack(tk, layer, 64)
    cfg = tk.launch.WgmmaConfig(bm=bm, codes=codes, stages=3, split=split, mmas=2, accs=2, pdl=True)
    y32 = tk.launch.wgmma(x, pw, layer.bias, cfg).float()
    for _ in range(2):  # the fp16 sums leave their workspace zeroed too
        y16 = tk.launch.wgmma(x, pw, layer.bias, replace(cfg, half_sums=True))
        check(y16, ref_out(x, layer), x)
        # each split's sum rounds to fp16 once and each add once more (in any order)
        assert (y16.float() - y32).abs().max() <= split * 2**-11 * y32.abs().max()


@hopper
@pytest.mark.parametrize("m,gs,n,k,bn,bm,bnw,warps,codes,stages,split,accs,x16,dtype,pdl", [
    (16, 128, 256, 2048, 64, 16, 64, 4, 4, 3, 2, 2, True, torch.float16, True),  # 2 CTAs, 4 chunks each
    (16, 128, 256, 2048, 64, 16, 64, 4, 4, 3, 8, 4, True, torch.float16, True),  # 8 CTAs, a chunk each
    (13, 128, 200, 1792, 64, 16, 64, 4, 4, 3, 4, 1, False, torch.float16, False),  # ragged M, N, bias; 2,2,2,1 chunks
    (16, 128, 128, 4608, 32, 16, 64, 4, 2, 3, 16, 2, False, torch.float16, True),  # 16 CTAs (non-portable), 7 idle
    (40, 128, 192, 2048, 64, 64, 64, 4, 2, 4, 2, 1, False, torch.bfloat16, False),  # two row tiles of clusters, bf16
    (16, -1, 64, 1024, 64, 32, 64, 4, 4, 3, 4, 2, False, torch.float16, True),  # per channel
    (16, 128, 512, 2048, 64, 16, 128, 8, 8, 2, 8, 2, False, torch.float16, True),  # two warpgroups a CTA
])
@pytest.mark.parametrize("meet_async", [False, True], ids=["ring", "async"])
def test_wgmma_cluster_split_k_matches_reference(tk, m, gs, n, k, bn, bm, bnw, warps, codes, stages, split, accs,
                                                 x16, dtype, pdl, meet_async):
    """The K splits of a tile as one cluster, meeting in distributed shared memory."""
    layer = make_layer(n, k, 4, gs, False, bias=m == 13, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, bn)
    cfg = tk.launch.WgmmaConfig(bm=bm, bnw=bnw, num_warps=warps, codes=codes, stages=stages, split=split, mmas=1,
                                accs=accs, x16=x16, pdl=pdl, cluster=True, meet_async=meet_async)
    for _ in range(2):  # nothing left behind between calls
        check(tk.launch.wgmma(x, pw, layer.bias, cfg), ref_out(x, layer), x)


@hopper
@pytest.mark.parametrize("meet_async", [False, True], ids=["ring", "async"])
def test_wgmma_cluster_takes_code_books(tk, meet_async):
    layer = nf4_layers.make_layer(192, 2048, "nf4", 64, bias=True, seed=3, device=tk.device)
    x = torch.randn(16, 2048, device=tk.device).half()
    pw = nf4_layers.repack(tk, layer, 64)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=8, stages=4, split=8, mmas=2, pdl=True, cluster=True,
                                meet_async=meet_async)
    nf4_layers.check(tk.launch.wgmma(x, pw, layer.bias, cfg), nf4_layers.ref_out(x, layer))


@hopper
@pytest.mark.parametrize("cluster", [False, True], ids=["global", "async"])
def test_wgmma_register_limit_keeps_the_results(tk, cluster):
    """4096x1024 M = 16's config (a chunk a split, 16 splits) capped at 112 registers a thread."""
    layer = make_layer(256, 4096, 4, 128, False, seed=17, device=tk.device)
    x = torch.randn(16, 4096, device=tk.device).half()
    pw = repack(tk, layer, 64)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=8, stages=3, split=16, mmas=3, accs=4, pdl=True, x16=True,
                                cluster=cluster, meet_async=cluster, maxnreg=112)
    for _ in range(2):
        check(tk.launch.wgmma(x, pw, None, cfg), ref_out(x, layer), x)


@hopper
@pytest.mark.parametrize("m,n,k,split,accs,x16,dtype,bias", [
    (16, 256, 4096, 16, 4, True, torch.float16, False),  # 4096x1024 M = 16's shape of config, a chunk a split
    (13, 200, 2048, 8, 2, False, torch.float16, True),  # ragged M and N, bias
    (16, 128, 1024, 4, 1, False, torch.bfloat16, False),  # bf16, one accumulator
])
@pytest.mark.parametrize("meeting", ["global", "ring", "async"])
def test_wgmma_predecode_matches_reference(tk, m, n, k, split, accs, x16, dtype, bias, meeting):
    """A program's one chunk decoded before the PDL wait, its 8 MMAs in flight at once."""
    layer = make_layer(n, k, 4, 128, False, bias=bias, seed=m + k + split, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, 64)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=8, stages=3, split=split, mmas=3, accs=accs, x16=x16, pdl=True,
                                cluster=meeting != "global", meet_async=meeting == "async", predecode=True)
    for _ in range(2):  # nothing left behind between calls
        check(tk.launch.wgmma(x, pw, layer.bias, cfg), ref_out(x, layer), x)


@hopper
def test_wgmma_predecode_leaves_empty_cluster_splits_at_zero(tk):
    """12 chunks over a cluster of 16: a chunk each for 12 CTAs, none for 4 (no x comes to them)."""
    layer = make_layer(128, 3072, 4, 128, False, seed=5, device=tk.device)
    x = torch.randn(16, 3072, device=tk.device).half()
    pw = repack(tk, layer, 64)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=8, stages=2, split=16, accs=2, pdl=True, cluster=True, meet_async=True,
                                predecode=True)
    check(tk.launch.wgmma(x, pw, None, cfg), ref_out(x, layer), x)


def test_wgmma_config_refuses_predecode_without_a_chunk_a_stage(tk):
    with pytest.raises(ValueError, match="predecode=True, codes=4"):
        tk.launch.WgmmaConfig(bm=16, codes=4, predecode=True)


@pytest.mark.parametrize("cluster", [True, False])
@pytest.mark.parametrize("split,one_chunk", [(16, True), (8, False)])
def test_wgmma_predecodes_only_where_a_program_has_one_chunk(tk, monkeypatch, cluster, split, one_chunk):
    """K = 4096 is 16 chunks: at 16 splits a program has one and decodes it ahead, at 8 it
    has two and runs the loop (the config's predecode notwithstanding)."""
    pw = repack(tk, make_layer(256, 4096, 4, 128, False), 64)
    seen = []
    monkeypatch.setattr(tk.launch._cluster, "launch", lambda kernel, grid, ctas, *a, **kw: seen.append(kw) or True)
    global_kernel = _FakeKernel(None)
    monkeypatch.setattr(tk.launch._wgmma, "int4_wgmma_kernel", global_kernel)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=8, stages=3, split=split, cluster=cluster, predecode=True)
    tk.launch.wgmma(torch.randn(16, 4096).half(), pw, None, cfg)
    [kwargs] = seen if cluster else [kw for _, _, kw in global_kernel.launches]
    assert kwargs["ONE_CHUNK"] is one_chunk
    tk.launch.wgmma(torch.randn(16, 4096).half(), pw, None, replace(cfg, predecode=False))
    [kwargs] = seen[1:] if cluster else [kw for _, _, kw in global_kernel.launches[1:]]
    assert kwargs["ONE_CHUNK"] is False


@pytest.mark.parametrize("fields,problem", [
    (dict(split=3), "2, 4, 8 or 16 K splits dividing bnw"),
    (dict(split=32), "2, 4, 8 or 16 K splits dividing bnw"),
    (dict(split=6), "2, 4, 8 or 16 K splits dividing bnw"),
    (dict(split=2, codes=1, stages=3), "bnw \\* 2 <= stages \\* codes \\* 32"),  # a [64, bm] float32 tile > the x ring
])
def test_wgmma_cluster_config_refuses_sizes_the_meeting_cannot_take(tk, fields, problem):
    with pytest.raises(ValueError, match=problem):
        tk.launch.WgmmaConfig(bm=16, cluster=True, **fields)


@pytest.mark.parametrize("fields", [dict(cluster=False, split=4), dict(cluster=True, split=4, bnw=64, num_warps=8)])
def test_wgmma_async_meeting_config_needs_a_cluster_and_one_thread_a_sum(tk, fields):
    with pytest.raises(ValueError, match="st.async meeting"):
        tk.launch.WgmmaConfig(bm=16, meet_async=True, **fields)


def test_wgmma_async_meeting_takes_tiles_larger_than_the_x_ring(tk):
    """Its slots are its own: a float32 tile larger than the x ring is no obstacle."""
    cfg = tk.launch.WgmmaConfig(bm=16, split=2, codes=1, stages=3, cluster=True, meet_async=True)
    assert cfg.meet_async and not tk.launch._wgmma.cluster_fits(cfg.bnw, cfg.codes, cfg.stages)


@pytest.mark.parametrize("fields", [dict(cluster=True, split=4), dict(cluster=True, split=3),
                                    dict(cluster=True, meet_async=True, split=4, bnw=64, num_warps=8),
                                    dict(cluster=True, meet_async=True, split=16, bnw=64, num_warps=4), dict(accs=3)])
def test_wgmma_config_valid_says_what_the_constructor_accepts(tk, fields):
    try:
        tk.launch.WgmmaConfig(bm=16, **fields)
        accepted = True
    except ValueError:
        accepted = False
    assert tk.launch.WgmmaConfig.valid(bm=16, **fields) is accepted


def test_tuner_sweeps_only_the_meetings_a_config_accepts(tk, monkeypatch):
    """benchmarks/tune_kernels.py filters by WgmmaConfig.valid: a tile of 8 warps over 64
    columns (one sum a thread needs 16 * 8) is swept without the st.async meeting instead of
    failing the sweep; 4 warps over it takes every meeting, 16-CTA clusters on st.async only."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    for name in ("kernels", "tune_kernels"):  # "kernels" may be an installed package's (Hugging Face's)
        monkeypatch.delitem(sys.modules, name, raising=False)
    tune = importlib.import_module("tune_kernels")
    tile = dict(bm=16, bnw=64, codes=8, stages=3)
    async_meeting = dict(cluster=True, meet_async=True)
    assert tune.split_meetings("wgmma", dict(tile, num_warps=8, split=4)) == [
        dict(half_sums=False), dict(half_sums=True), dict(cluster=True)]
    assert tune.split_meetings("wgmma_lut", dict(tile, num_warps=4, split=4)) == [
        dict(half_sums=False), dict(cluster=True), async_meeting]
    assert tune.split_meetings("wgmma", dict(tile, num_warps=4, split=16)) == [
        dict(half_sums=False), dict(half_sums=True), async_meeting]
    assert tune.split_meetings("wgmma", dict(tile, num_warps=4, split=1)) == [{}]


def test_tuner_sweeps_predecode_only_where_a_program_has_one_int4_chunk(tk, monkeypatch):
    """4096x1024 at M = 16 (16 chunks): predecode only at 16 splits, 8 codes a stage, PDL, int4."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    for name in ("kernels", "tune_kernels"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    tune = importlib.import_module("tune_kernels")
    jobs = tune.wgmma_jobs(16, 1024, 16, quick=True)
    ahead = [cfg for kind, cfg in jobs if cfg.predecode]
    assert ahead and all(cfg.split == 16 and cfg.codes == 8 and cfg.pdl for cfg in ahead)
    assert all(kind == "wgmma" for kind, cfg in jobs if cfg.predecode)
    assert len(ahead) == len([cfg for kind, cfg in jobs if kind == "wgmma" and cfg.split == 16 and cfg.codes == 8
                              and cfg.pdl and not cfg.predecode])


@pytest.mark.parametrize("dtype,n,red", [(torch.float16, 136, 8), (torch.bfloat16, 136, 4), (torch.float16, 132, 4),
                                         (torch.float16, 90, 1)])
def test_wgmma_half_sums_need_fp16_rows_of_whole_16_byte_groups(tk, dtype, n, red):
    """fp16 sums for fp16 x only (bf16 sums would round 8x coarser) and N % 8 == 0 (one
    16-byte vector atomic a group); else float32, four at once where N % 4 == 0."""
    pw = repack(tk, make_layer(n, 256, 4, 128, False, device=tk.device), 32)
    x = torch.randn(16, 256, device=tk.device).to(dtype)
    cfg = tk.launch.WgmmaConfig(bm=16, split=2, half_sums=True)
    assert tk.launch.wgmma_red(cfg, x, pw) == red
    assert tk.launch.wgmma_red(replace(cfg, half_sums=False), x, pw) == min(red, 4)


def test_wgmma_half_sums_leave_code_book_layers_on_float32_sums(tk):
    pw = nf4_layers.repack(tk, nf4_layers.make_layer(136, 256, "nf4", 64, device=tk.device), 32)
    x = torch.randn(16, 256, device=tk.device).half()
    assert tk.launch.wgmma_red(tk.launch.WgmmaConfig(bm=16, split=2, half_sums=True), x, pw) == 4


@hopper
def test_wgmma_dispatch_takes_many_rows(tk):
    layer = make_layer(128, 512, 4, 128, False, device=tk.device)
    for m in (tk.configs.WGMMA_MIN_M, 257):
        x = torch.randn(m, 512, device=tk.device).half()
        check(tk.linear.int_group(x, layer), ref_out(x, layer), x)


def test_wgmma_refuses_what_it_cannot_take(tk):
    dev = tk.device
    x = torch.randn(128, 512, device=dev).half()
    assert not tk.launch.wgmma_ok(x, repack(tk, make_layer(32, 512, 4, 64, False, device=dev), 32))  # g64
    assert not tk.launch.wgmma_ok(x, repack(tk, make_layer(32, 512, 4, 128, False, act_order=True, device=dev), 32))
    g128 = repack(tk, make_layer(32, 512, 4, 128, False, device=dev), 32)
    assert not tk.launch.wgmma_ok(x.float(), g128)  # fp32 activations
    assert not tk.launch.wgmma_ok(x[:, 1:509], repack(tk, make_layer(32, 508, 4, 128, False, device=dev), 32))
    if not (tk.gpu and torch.cuda.get_device_capability()[0] == 9):
        assert not tk.launch.wgmma_ok(x, g128)  # CPU / interpreter / not Hopper


def test_dispatch_sends_8_to_512_rows_to_wgmma_and_fewer_or_more_elsewhere(tk):
    prefers = tk.configs.prefers_wgmma
    assert not prefers(4, 4096, 4096)  # mma16 (they tied at M = 2)
    assert prefers(8, 4096, 4096) and prefers(16, 4096, 4096) and prefers(256, 4096, 4096)  # measured shape
    assert prefers(48, 6144, 4096) and prefers(512, 6144, 4096)  # an unmeasured shape in range
    assert not prefers(1024, 4096, 4096) and not prefers(4096, 6144, 4096)  # prefill: dequantize + cuBLAS


def test_wgmma_heuristic_config_fits_rows_and_fills_the_gpu(tk):
    cfg = tk.configs.wgmma_config(20, 6144, 4096, torch.device("cpu"))  # unmeasured shape, 132 SMs assumed
    assert cfg.bm == 32 and cfg.split == 2  # 96 column tiles: two K splits fill 132 SMs
    assert not cfg.half_sums  # fp16 split sums measured slower with few rows
    big = tk.configs.wgmma_config(512, 6144, 4096, torch.device("cpu"))
    assert big.bm == 128 and big.half_sums


@hopper
@pytest.mark.parametrize("quant_type,blocksize,m,n,k,bn,bm,codes,split,dtype", [
    ("nf4", 64, 16, 128, 1024, 64, 16, 4, 1, torch.float16),  # absmax per quarter chunk
    ("nf4", 64, 100, 200, 768, 32, 64, 2, 1, torch.float16),  # ragged M and N, bias, K % 256 != 0
    ("fp4", 128, 256, 128, 1024, 64, 128, 8, 2, torch.float16),  # a chunk a stage, split-K
    ("nf4", 64, 40, 64, 1280, 64, 64, 2, 3, torch.bfloat16),  # uneven splits, bf16
    ("nf4", 256, 9, 96, 1024, 32, 16, 4, 1, torch.float16),
])
def test_wgmma_code_book_matches_reference(tk, quant_type, blocksize, m, n, k, bn, bm, codes, split, dtype):
    """NF4/FP4 on wgmma: lut[code] by shuffle, times the block's absmax, into the MMA."""
    layer = nf4_layers.make_layer(n, k, quant_type, blocksize, bias=m == 100, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = nf4_layers.repack(tk, layer, bn)
    assert tk.launch.wgmma_ok(x, pw)
    for accs in (1, 4):
        cfg = tk.launch.WgmmaConfig(bm=bm, codes=codes, stages=3, split=split, mmas=2, accs=accs)
        for _ in range(2 if split > 1 else 1):  # split-K: the workspace is left zeroed for a second call
            nf4_layers.check(tk.launch.wgmma(x, pw, layer.bias, cfg), nf4_layers.ref_out(x, layer))


def test_code_book_layers_get_their_own_measured_wgmma_config_else_int4s(tk, tmp_path, monkeypatch):
    monkeypatch.setattr(tk.configs, "WGMMA_LUT", {})  # the measured entries aside
    int4 = tk.configs.wgmma_config(16, 4096, 4096, torch.device("cpu"))
    assert tk.configs.wgmma_config(16, 4096, 4096, torch.device("cpu"), lut=True) == int4
    best = tmp_path / "best.json"  # as benchmarks/kernels.py --tune --only wgmma_lut --best writes it
    best.write_text('[{"k": 4096, "n": 4096, "bits": 4, "kind": "wgmma", "mode": "lut", "m": 16, '
                    '"cfg": {"bm": 16, "bnw": 64, "codes": 8, "stages": 5, "num_warps": 4, "split": 2, "mmas": 2, '
                    '"pdl": false}}]')
    monkeypatch.setattr(tk.configs, "WGMMA", dict(tk.configs.WGMMA))
    tk.configs.load_table(str(best))
    lut = tk.configs.wgmma_config(16, 4096, 4096, torch.device("cpu"), lut=True)
    assert (lut.codes, lut.stages, lut.split) == (8, 5, 2)
    assert tk.configs.wgmma_config(16, 4096, 4096, torch.device("cpu")) == int4  # int4 layers keep theirs


@pytest.mark.parametrize("field,value", [("mmas", 4), ("mmas", 0), ("accs", 3)])
def test_wgmma_config_refuses_counts_the_kernel_has_no_code_for(tk, field, value):
    with pytest.raises(ValueError, match=f"WgmmaConfig.{field}={value}"):
        tk.launch.WgmmaConfig(**{field: value})


def test_wgmma_config_refuses_x16_with_one_accumulator(tk):
    """The odd positions' 16-times weights need accumulators of their own to be scaled back."""
    with pytest.raises(ValueError, match="x16 needs accs=2 or 4"):
        tk.launch.WgmmaConfig(accs=1, x16=True)
    assert tk.launch.WgmmaConfig(accs=2, x16=True).x16


def test_cluster_launcher_asks_load_balancing_and_leaves_triton_as_it_was(tk, monkeypatch):
    """The cluster launch swaps the scheduling policy in the C source of its own kernel's
    launcher only, and loads the kernel again for the launch's shared memory; Triton's launcher
    factory is restored afterwards."""
    from triton.backends.nvidia import driver as nvidia

    from lowbit.kernels.triton import cluster

    def make(*args, **kwargs):
        return "attr.value.clusterSchedulingPolicyPreference = CU_CLUSTER_SCHEDULING_POLICY_SPREAD;"

    monkeypatch.setattr(nvidia, "make_launcher", make, raising=False)
    sources, loads = [], []
    fake_driver = types.SimpleNamespace(active=types.SimpleNamespace(
        launcher_cls=lambda src, metadata: sources.append(nvidia.make_launcher(None, None, None)) or "launcher",
        get_current_device=lambda: 0,
        utils=types.SimpleNamespace(load_binary=lambda *a: loads.append(a) or ("module", "function", 0, 0, 0))))
    monkeypatch.setattr(sys.modules["triton.runtime.driver"], "driver", fake_driver)
    compiled = types.SimpleNamespace(_run="spread launcher", module="loaded", function="old", src="src", name="k",
                                     kernel=b"cubin", metadata=types.SimpleNamespace(shared=70000))
    cluster._load_balanced(compiled)
    assert compiled._run == "launcher"
    assert sources == ["attr.value.clusterSchedulingPolicyPreference = CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING;"]
    assert loads == [("k", b"cubin", 70000, 0)] and compiled.function == "function"
    assert nvidia.make_launcher is make


class _FakeKernel:
    """A compiled-kernel stand-in: ``warmup`` returns ``compiled``; launches are recorded."""

    def __init__(self, compiled):
        self.compiled, self.launches = compiled, []

    def warmup(self, *args, grid, **kwargs):
        return self.compiled

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs))


def test_cluster_launch_sets_the_cluster_size_in_the_launch_metadata_once(tk, monkeypatch):
    balanced = []
    monkeypatch.setattr(tk.launch._cluster, "_load_balanced", balanced.append)
    compiled = types.SimpleNamespace(packed_metadata=(4, 1, 24576), metadata=types.SimpleNamespace(), name="k")
    kernel = _FakeKernel(compiled)
    for _ in range(2):
        assert tk.launch._cluster.launch(kernel, (1, 64, 1), 8, "a", K=1)
    assert compiled.packed_metadata == (4, 8, 24576)
    assert balanced == [compiled]  # the launcher is swapped once
    assert kernel.launches == [((1, 64, 1), ("a",), dict(K=1))] * 2


def test_cluster_launch_adds_the_meeting_past_the_compilers_shared_memory(tk, monkeypatch):
    """``extra_shared`` bytes start 16-byte aligned past the compiled kernel's shared memory,
    in the launch metadata and in the metadata the kernel is loaded with (the opt-in > 48 KB)."""
    monkeypatch.setattr(tk.launch._cluster, "_load_balanced", lambda compiled: None)
    Meta = collections.namedtuple("Meta", "name shared")
    compiled = types.SimpleNamespace(packed_metadata=(4, 1, 49000), metadata=Meta("k", 49000), name="k")
    assert tk.launch._cluster.launch(_FakeKernel(compiled), (1, 64, 1), 16, extra_shared=4112)
    assert compiled.packed_metadata == (4, 16, 49008 + 4112)
    assert compiled.metadata.shared == 49008 + 4112


def test_cluster_launch_declines_where_triton_has_no_launch_metadata_to_set(tk, monkeypatch):
    kernel = _FakeKernel(types.SimpleNamespace(metadata=types.SimpleNamespace(), name="k"))
    assert not tk.launch._cluster.launch(kernel, (1, 64, 1), 8)
    assert kernel.launches == []


@pytest.mark.parametrize("cluster_launches", [True, False])
def test_wgmma_cluster_config_meets_in_global_memory_where_no_cluster_launches(tk, monkeypatch, cluster_launches):
    """The same config and grid; where this Triton cannot launch a cluster, the K splits meet
    through the workspace instead (one program a split along the grid's last axis)."""
    pw = repack(tk, make_layer(256, 2048, 4, 128, False), 64)  # 8 chunks
    x = torch.randn(16, 2048).half()
    calls = []

    def fake_cluster(kernel, grid, ctas, *args, **kwargs):
        calls.append(("cluster", grid, ctas, args[-2:], kwargs["SPLIT_K"], kwargs["CLUSTER"]))
        return cluster_launches

    global_kernel = _FakeKernel(None)
    monkeypatch.setattr(tk.launch._cluster, "launch", fake_cluster)
    monkeypatch.setattr(tk.launch._wgmma, "int4_wgmma_kernel", global_kernel)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=4, stages=3, split=4, cluster=True)
    tk.launch.wgmma(x, pw, None, cfg)
    assert calls == [("cluster", (1, 4, 1), 4, (2, 1), False, 4)]  # 2 chunks a CTA, no workspace
    if cluster_launches:
        assert global_kernel.launches == []
    else:
        [(grid, args, kwargs)] = global_kernel.launches
        assert grid == (1, 4, 4) and args[-2:] == (2, 4) and kwargs["SPLIT_K"] and kwargs["CLUSTER"] == 1


@pytest.mark.parametrize("meet_async,extra", [(False, 0), (True, 16 + 64 * 16 * 4)])
def test_wgmma_async_meeting_launches_with_its_slots_past_the_kernels_shared_memory(tk, monkeypatch, meet_async,
                                                                                    extra):
    """The st.async meeting's mbarrier and one float32 [bnw, bm] tile of slots are added to the
    launch's shared memory; the ring meeting reuses the x ring and adds nothing."""
    pw = repack(tk, make_layer(256, 2048, 4, 128, False), 64)
    calls = []
    monkeypatch.setattr(tk.launch._cluster, "launch",
                        lambda kernel, grid, ctas, *a, **kw: calls.append((kw["extra_shared"], kw["MEET_ASYNC"])) or True)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=4, stages=3, split=4, cluster=True, meet_async=meet_async)
    tk.launch.wgmma(torch.randn(16, 2048).half(), pw, None, cfg)
    assert calls == [(extra, meet_async)]


@pytest.mark.parametrize("maxnreg", [0, 16, 256])
def test_wgmma_config_refuses_register_limits_ptxas_cannot_take(tk, maxnreg):
    with pytest.raises(ValueError, match="maxnreg"):
        tk.launch.WgmmaConfig(bm=16, maxnreg=maxnreg)


@pytest.mark.parametrize("cluster", [True, False])
@pytest.mark.parametrize("maxnreg", [None, 112])
def test_wgmma_register_limit_reaches_the_compiler_in_both_meetings(tk, monkeypatch, cluster, maxnreg):
    """``maxnreg`` is a compile option of the launch (cluster or global split-K); None leaves
    the compiler's choice (no option at all: the same compiled kernel as before the field)."""
    pw = repack(tk, make_layer(256, 2048, 4, 128, False), 64)
    seen = []
    monkeypatch.setattr(tk.launch._cluster, "launch", lambda kernel, grid, ctas, *a, **kw: seen.append(kw) or True)
    global_kernel = _FakeKernel(None)
    monkeypatch.setattr(tk.launch._wgmma, "int4_wgmma_kernel", global_kernel)
    cfg = tk.launch.WgmmaConfig(bm=16, codes=4, stages=3, split=4, cluster=cluster, maxnreg=maxnreg)
    tk.launch.wgmma(torch.randn(16, 2048).half(), pw, None, cfg)
    [kwargs] = seen if cluster else [kw for _, _, kw in global_kernel.launches]
    assert kwargs.get("maxnreg") == maxnreg and ("maxnreg" in kwargs) == (maxnreg is not None)
