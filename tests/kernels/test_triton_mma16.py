"""The mma.sync int4 kernel for 2..16 rows (mma16, Gluon) vs kernels/reference.py.

Gluon kernels do not run under TRITON_INTERPRET, so the numbers are checked on a CUDA GPU
(the device tool); on CPU only the dispatch rules are.
"""
from __future__ import annotations

import pytest
import torch
from int_layers import check, make_layer, ref_out, repack

pytestmark = pytest.mark.usefixtures("one_thread")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="Gluon kernel: CUDA only (no interpreter)")


@needs_gpu
@pytest.mark.parametrize("m,gs,sym,n,k,bn,split,wr,wh,depth,dtype", [
    (16, 128, False, 64, 512, 32, 1, 2, 1, 2, torch.float16),
    (3, 128, True, 40, 1024, 32, 2, 2, 1, 1, torch.float16),  # ragged N, split-K, bias
    (9, -1, False, 64, 768, 64, 1, 1, 2, 2, torch.float16),  # per channel, two column quads over two warps
    (2, 256, False, 96, 1280, 32, 3, 1, 1, 2, torch.float16),  # K % 256 != 0
    (16, 128, False, 256, 2048, 64, 4, 2, 2, 1, torch.float16),
    (7, 128, False, 64, 1024, 64, 2, 1, 2, 2, torch.bfloat16),  # bf16 rows, rounded to fp16 when paired
    (41, 128, False, 96, 1024, 32, 2, 1, 1, 2, torch.float16),  # three row tiles, the last one ragged
    (64, 128, True, 64, 512, 64, 1, 1, 2, 2, torch.bfloat16),
])
def test_mma16_matches_reference(tk, m, gs, sym, n, k, bn, split, wr, wh, depth, dtype):
    layer = make_layer(n, k, 4, gs, sym, bias=m == 3, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, bn)
    assert tk.launch.mma16_ok(x, pw, max_m=64)
    y = tk.launch.mma16(x, pw, layer.bias, tk.launch.Mma16Config(split=split, wr=wr, wh=wh, depth=depth))
    check(y, ref_out(x, layer), x)


@needs_gpu
@pytest.mark.parametrize("m,gs,sym,n,k,bn,step,dtype", [
    # 8 chunks a step side by side over half the block, a warp per chunk half
    (16, 128, False, 128, 2048, 64, dict(chunks=8, wc=8, wr=2, v=4, cols=32), torch.float16),
    # K % 256 != 0 with steps of 4 over 5 chunks (the last step three quarters empty), 2 columns a lane
    (5, 128, False, 96, 1280, 32, dict(chunks=4, wc=2, wr=2, v=2, cols=16), torch.float16),
    # one column a lane over 8 columns, and split-K on top: 12 chunks, 8 + 4
    (16, 256, True, 64, 3072, 64, dict(chunks=4, wc=4, v=1, cols=8, split=2), torch.float16),
    # per channel; a step of 16 chunks on a 4-chunk layer is clamped to 4
    (12, -1, False, 64, 1024, 64, dict(chunks=16, wc=4, v=4, cols=64, depth=1), torch.bfloat16),
    # ragged N over column slices of a block, two row tiles, 3 chunks in steps of 2
    (20, 128, False, 40, 768, 32, dict(chunks=2, wc=2, v=2, cols=16), torch.float16),
])
def test_mma16_chunks_side_by_side_match_reference(tk, m, gs, sym, n, k, bn, step, dtype):
    layer = make_layer(n, k, 4, gs, sym, bias=m == 5, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, bn)
    assert tk.launch.mma16_ok(x, pw, max_m=64)
    y = tk.launch.mma16(x, pw, layer.bias, tk.launch.Mma16Config(**step))
    check(y, ref_out(x, layer), x)


def test_mma16_step_clamps_to_what_the_layer_takes(tk):
    pw = repack(tk, make_layer(64, 1024, 4, 128, False, device=tk.device), 64)  # 4 chunks, block 64
    step = tk.launch.mma16_step
    cfg = tk.launch.Mma16Config
    assert step(cfg(chunks=16, wc=8), pw) == cfg(chunks=4, wc=1, v=4, cols=64)  # chunks: at most the layer's
    assert step(cfg(chunks=3, wc=2), pw) == cfg(chunks=2, wc=2, v=4, cols=64)  # a power of two
    assert step(cfg(v=2, cols=32, wh=2), pw) == cfg(v=2, cols=32, wh=2)  # two groups of 16 columns
    assert step(cfg(v=1, cols=24), pw) == cfg(v=1, cols=64)  # 24 does not divide the block
    assert step(cfg(v=4, cols=16), pw) == cfg(v=4, cols=64)  # 16 columns of 4: under one group of 8 lanes
    assert step(cfg(v=3, wh=4), pw) == cfg(v=4, cols=64, wh=1)  # v 1, 2 or 4; wh divides the 2 groups


@needs_gpu
def test_mma16_dispatch_takes_m_2_to_16(tk):
    layer = make_layer(64, 512, 4, 128, False, device=tk.device)
    for m in (2, 5, 16):
        x = torch.randn(m, 512, device=tk.device).half()
        check(tk.linear.int_group(x, layer), ref_out(x, layer), x)


def test_mma16_refuses_what_it_cannot_take(tk):
    dev = tk.device
    x = torch.randn(4, 512, device=dev).half()
    assert not tk.launch.mma16_ok(x, repack(tk, make_layer(32, 512, 4, 64, False, device=dev), 32))  # g64
    assert not tk.launch.mma16_ok(x, repack(tk, make_layer(32, 512, 4, 128, False, act_order=True, device=dev), 32))
    g128 = repack(tk, make_layer(32, 512, 4, 128, False, device=dev), 32)
    assert not tk.launch.mma16_ok(torch.randn(17, 512, device=dev).half(), g128)  # more rows than max_m
    assert not tk.launch.mma16_ok(torch.randn(1, 512, device=dev).half(), g128)  # one row: the GEMV's
    assert not tk.launch.mma16_ok(x.float(), g128)  # fp32 activations
    if not tk.gpu:
        assert not tk.launch.mma16_ok(x, g128)  # CPU / interpreter: no Gluon
