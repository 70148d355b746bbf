"""The f16x2 int4 GEMV (gemv_half2) vs kernels/reference.py: every group size and zero
mode it takes, act-order, ragged K and N, split-K."""
from __future__ import annotations

import pytest
import torch
from int_layers import check, make_layer, ref_out, repack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("gs,sym,act,n,k,bn,depth,split", [  # depth: chunks prefetched
    (128, False, False, 40, 512, 32, 1, 1),
    (128, True, False, 64, 1024, 64, 0, 2),
    (128, False, False, 40, 1280, 32, 2, 2),  # 2-deep prefetch over 3 and 2 chunks
    (64, False, True, 24, 576, 16, 2, 2),  # ragged group, K % 256 != 0, act-order
    (64, False, False, 24, 580, 16, 0, 1),  # K % 4 != 0: activations gathered one by one
    (32, False, False, 16, 512, 16, 1, 1),
    (-1, False, False, 20, 256, 16, 0, 1),  # per channel
    (-1, True, False, 20, 768, 16, 1, 3),
])
def test_gemv_half2(tk, gs, sym, act, n, k, bn, depth, split):
    layer = make_layer(n, k, 4, gs, sym, act, bias=gs == 128, seed=gs + k, device=tk.device)
    x = torch.randn(1, k, device=tk.device).half()
    pw = repack(tk, layer, bn)
    assert tk.launch.half2_ok(x, pw)
    y = tk.launch.gemv_half2(x, pw, layer.bias, tk.launch.GemvConfig(split=split, prefetch=depth > 0,
                                                                                depth=max(depth, 1), half2=True))
    check(y, ref_out(x, layer), x)


@pytest.mark.parametrize("gs,sym,act,n,k,bn,chunks,cols,depth,split", [
    (128, False, False, 40, 1280, 32, 2, 16, 2, 1),  # 5 chunks in steps of 2: the last step half empty
    (128, True, False, 64, 2048, 64, 4, 32, 1, 2),  # 8 chunks: two splits of one 4-chunk step
    (64, False, True, 24, 1088, 16, 4, 8, 1, 1),  # two group pairs a chunk, act-order, ragged K
    (32, False, False, 16, 768, 16, 2, 0, 0, 1),  # four group pairs a chunk, no prefetch
    (64, False, False, 32, 1024, 32, 2, 16, 1, 1),  # K % (256 * chunks) == 0: scales by row pointers
    (32, True, False, 16, 512, 16, 2, 8, 2, 1),  # the same with four group pairs a chunk
])
def test_gemv_half2_chunks_side_by_side(tk, gs, sym, act, n, k, bn, chunks, cols, depth, split):
    """Several chunks a loop step (summed across the program at the end) over part of a
    layout block's columns: the same sums as one chunk a step over the whole block."""
    layer = make_layer(n, k, 4, gs, sym, act, bias=split == 2, seed=gs + k + chunks, device=tk.device)
    x = torch.randn(1, k, device=tk.device).half()
    pw = repack(tk, layer, bn)
    cfg = tk.launch.GemvConfig(split=split, chunks=chunks, cols=cols, prefetch=depth > 0, depth=max(depth, 1),
                               half2=True)
    assert tk.launch.half2_step(cfg, pw) == (chunks, cols or bn)
    y = tk.launch.gemv_half2(x, pw, layer.bias, cfg)
    check(y, ref_out(x, layer), x)


@pytest.mark.parametrize("gs,sym,act,k,chunks,cols,depth,split,dtype", [
    (128, False, False, 1280, 4, 16, 2, 1, torch.float16),  # two steps: the first decoded before the wait
    (128, True, True, 1024, 4, 0, 1, 1, torch.float16),  # symmetric, act-order, the whole K in one step
    (-1, False, False, 768, 1, 0, 1, 2, torch.bfloat16),  # per channel, one chunk a step, split-K, bf16
])
def test_gemv_half2_predecoded_sums_as_fused(tk, gs, sym, act, k, chunks, cols, depth, split, dtype):
    """int4 codes decoded to (q - zero) / 16 ahead of their FMAs (the first step's before the
    PDL wait): bit for bit the sums of the fused decode-and-FMA loop."""
    from dataclasses import replace

    layer = make_layer(40, k, 4, gs, sym, act, bias=split == 2, seed=k + 3, device=tk.device)
    x = torch.randn(1, k, device=tk.device).to(dtype)
    pw = repack(tk, layer, 32)
    cfg = tk.launch.GemvConfig(split=split, chunks=chunks, cols=cols, depth=depth, half2=True)
    assert tk.launch.predecodes(replace(cfg, predecode=True), pw)
    pre = tk.launch.gemv_half2(x, pw, layer.bias, replace(cfg, predecode=True))
    assert torch.equal(pre, tk.launch.gemv_half2(x, pw, layer.bias, cfg))
    check(pre, ref_out(x, layer), x)


def test_gemv_half2_predecodes_int4_with_one_group_pair_a_chunk(tk):
    cfg = tk.launch.GemvConfig(half2=True, predecode=True)
    g64 = repack(tk, make_layer(32, 512, 4, 64, False, device=tk.device), 32)  # two group pairs a chunk
    g128 = repack(tk, make_layer(32, 512, 4, 128, False, device=tk.device), 32)
    assert not tk.launch.predecodes(cfg, g64) and tk.launch.predecodes(cfg, g128)
    assert not tk.launch.predecodes(tk.launch.GemvConfig(half2=True, predecode=True, prefetch=False), g128)


def test_gemv_half2_large_activations_stay_finite(tk):
    """Activations of a few thousand (LLM outlier features) must not overflow the fp16
    partial sums: the kernel carries (q - zero) / 16."""
    layer = make_layer(32, 512, 4, 128, False, seed=3, device=tk.device)
    x = torch.randn(1, 512, device=tk.device)
    x[0, ::37] = 3000.0
    x = x.half()
    y = tk.launch.gemv_half2(x, repack(tk, layer, 32), None, tk.launch.GemvConfig(half2=True))
    check(y, ref_out(x, layer), x)


@pytest.mark.parametrize("act", [False, True])
def test_gemv_half2_bf16_activations(tk, act):
    """bf16 rows are rounded to fp16 as they are paired; the output comes back in bf16."""
    layer = make_layer(48, 512, 4, 128, False, act, seed=5, device=tk.device)
    x = torch.randn(1, 512, device=tk.device).bfloat16()
    y = tk.launch.gemv_half2(x, repack(tk, layer, 16), None, tk.launch.GemvConfig(split=2, half2=True))
    check(y, ref_out(x, layer), x)


def test_half2_refuses_other_inputs(tk):
    layer = make_layer(16, 256, 4, 128, False, device=tk.device)
    pw = repack(tk, layer, 16)
    assert not tk.launch.half2_ok(torch.zeros(1, 256, dtype=torch.float32, device=tk.device), pw)
    assert not tk.launch.half2_ok(torch.zeros(1, 256, dtype=torch.float16, device=tk.device),
                                  repack(tk, make_layer(16, 256, 8, 128, False, device=tk.device), 16))


@pytest.mark.parametrize("n,bn,split,cols", [(64, 32, 1, 0), (40, 16, 2, 0), (64, 32, 1, 8)])  # 40: a ragged last
def test_gemv_half2_silu_epilogue(tk, n, bn, split, cols):  # block of 4 pairs; 8: four programs a block
    """silu=True: outputs 2i, 2i + 1 are gate and up of feature i; y holds silu(gate) * up,
    with and without split-K (the product then comes from the last program of a tile)."""
    layer = make_layer(n, 512, 4, 128, False, seed=n, device=tk.device)
    x = torch.randn(1, 512, device=tk.device).half()
    y = tk.launch.gemv_half2(x, repack(tk, layer, bn), None,
                             tk.launch.GemvConfig(split=split, cols=cols, chunks=2, half2=True), silu=True)
    full = ref_out(x, layer)
    check(y, torch.nn.functional.silu(full[:, 0::2]) * full[:, 1::2], x)
