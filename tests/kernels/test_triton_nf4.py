"""Triton kernels on Linear4bit (NF4 / FP4 code books) vs kernels/reference.py."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nf4_layers import check, make_layer, ref_out, repack

from lowbit.formats import nf4


def test_repack_nf4_codes(tk):
    layer = make_layer(12, 512)
    pw = repack(tk, layer)
    words = pw.qweight.permute(1, 2, 0, 3).reshape(pw.chunks, tk.layout.PK, -1)
    codes = torch.stack([(words >> (4 * j)) & 15 for j in range(8)], dim=1).reshape(-1, words.shape[-1])[:512, :12]
    assert torch.equal(codes.t().to(torch.uint8), nf4.unpack_nibbles(layer.weight_4bit, 12 * 512).view(12, 512))
    assert pw.scales.dtype == torch.float16  # every absmax a normal fp16: half the bytes
    assert torch.equal(pw.scales, layer.absmax_float().view(12, 8).t().half())


def test_repack_nf4_keeps_float32_absmax_outside_the_fp16_range(tk):
    layer = make_layer(12, 512)
    absmax = layer.absmax_float().clone()
    absmax[3] = 1e-6  # a block of near-zero weights: subnormal in fp16
    pw = tk.layout.repack_nf4(layer.weight_4bit, absmax, layer.code, 12, 512, 64, 16)
    assert pw.scales.dtype == torch.float32 and torch.equal(pw.scales, absmax.view(12, 8).t())


def test_repack_nf4_refuses_straddling_blocks(tk):
    layer = make_layer(4, 96, blocksize=64)  # 96 % 64: blocks straddle rows
    with pytest.raises(tk.layout.Unsupported, match="straddle"):
        repack(tk, layer)


@pytest.mark.parametrize("quant_type,double_quant,m,lut_reg", [("nf4", True, 1, False), ("fp4", False, 2, False),
                                                                ("nf4", True, 1, True)])
def test_gemv_nf4(tk, quant_type, double_quant, m, lut_reg):
    layer = make_layer(40, 512, quant_type, double_quant=double_quant, bias=m == 1, device=tk.device)
    x = torch.randn(m, 512, device=tk.device).half()
    y = tk.launch.gemv(x, repack(tk, layer, 32), layer.bias, tk.launch.GemvConfig(split=2, lut_reg=lut_reg))
    check(y, ref_out(x, layer))


@pytest.mark.parametrize("m", [17, 64])
def test_gemm_nf4(tk, m):
    layer = make_layer(48, 512, blocksize=128, bias=True, device=tk.device)
    x = torch.randn(m, 512, device=tk.device).half()
    y = tk.launch.gemm(x, repack(tk, layer), layer.bias, tk.launch.GemmConfig(bm=16, bnt=32))
    check(y, ref_out(x, layer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the dispatch path)")
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_gpu_dispatch_nf4(tk, quant_type):
    from lowbit.kernels import KERNELS

    for n, k, dtype in [(96, 1024, torch.float16), (4096 + 64, 768, torch.bfloat16), (200, 4096, torch.float16)]:
        layer = make_layer(n, k, quant_type, bias=n == 200, seed=n, device="cuda")
        for m in (1, 3, 16, 17, 64, 257):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            y = layer(x)
            assert tk.linear.nf4 in KERNELS["nf4"] and layer.__dict__["_lowbit_triton"].packed is not None
            ref = ref_out(x, layer)
            err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
            assert err < (2e-2 if dtype == torch.bfloat16 else 4e-3), (n, k, m, err)


@pytest.mark.parametrize("quant_type,blocksize,n,k,bn,split,chunks,cols,dtype", [
    ("nf4", 64, 40, 512, 32, 2, 1, 0, torch.float16),  # two group pairs a chunk
    ("nf4", 32, 24, 768, 16, 3, 1, 0, torch.float16),  # four group pairs a chunk, K % 256 == 0 over 3 chunks
    ("fp4", 128, 48, 512, 16, 1, 1, 0, torch.float16),  # one group pair
    ("nf4", 128, 48, 512, 16, 1, 1, 0, torch.bfloat16),  # bf16 rounded to fp16 as it is paired, bf16 out
    ("nf4", 256, 20, 1280, 16, 2, 1, 0, torch.float16),  # ragged last column block, block over two chunks
    ("nf4", 64, 40, 1280, 32, 1, 4, 16, torch.float16),  # 4 chunks a step (5 in all) over half a block
    ("nf4", 64, 40, 1024, 32, 1, 2, 8, torch.float16),  # 2 chunks a step (4 in all): scales by row pointers
])
def test_gemv_half2_code_book(tk, quant_type, blocksize, n, k, bn, split, chunks, cols, dtype):
    """The f16x2 GEMV on a code book (lut[q] by warp shuffle) agrees with the reference."""
    layer = make_layer(n, k, quant_type, blocksize, double_quant=quant_type == "nf4", bias=split == 2, seed=k,
                       device=tk.device)
    x = torch.randn(1, k, device=tk.device, dtype=dtype)
    pw = repack(tk, layer, bn)
    assert tk.launch.half2_ok(x, pw)
    y = tk.launch.gemv_half2(x, pw, layer.bias, tk.launch.GemvConfig(split=split, chunks=chunks, cols=cols,
                                                                     half2=True, depth=2))
    assert y.dtype == dtype
    check(y, ref_out(x, layer))


@pytest.mark.parametrize("blocksize,k,split,chunks,cols,depth,dtype", [
    (64, 1280, 1, 4, 16, 2, torch.float16),  # two steps: the first decoded before the wait, the second in the loop
    (64, 1024, 1, 4, 0, 1, torch.float16),  # the whole K in one step
    (32, 2048, 2, 2, 8, 2, torch.bfloat16),  # split-K, four group pairs a chunk, bf16
    (128, 768, 1, 1, 0, 1, torch.float16),  # one chunk a step: three steps
])
def test_gemv_half2_code_book_predecoded_sums_as_fused(tk, blocksize, k, split, chunks, cols, depth, dtype):
    """Decoding a step's codes ahead of its FMAs (the first step's before the PDL wait) gives
    bit for bit the sums of the fused shuffle-and-FMA loop, and the reference's values."""
    layer = make_layer(40, k, "nf4", blocksize, double_quant=True, bias=False, seed=k + 1, device=tk.device)
    x = torch.randn(1, k, device=tk.device, dtype=dtype)
    pw = repack(tk, layer, 32)
    cfg = tk.launch.GemvConfig(split=split, chunks=chunks, cols=cols, half2=True, depth=depth)
    fused = tk.launch.gemv_half2(x, pw, None, cfg)
    pre = tk.launch.gemv_half2(x, pw, None, replace(cfg, predecode=True))
    assert torch.equal(pre, fused)
    check(pre, ref_out(x, layer))


def test_code_book_layers_take_the_half2_gemv_only(tk):
    """NF4 rows go to gemv_half2 at M = 1; the int4-only Gluon kernels refuse them."""
    layer = make_layer(32, 512, device=tk.device)
    pw = repack(tk, layer, 32)
    x = torch.zeros(1, 512, dtype=torch.float16, device=tk.device)
    assert tk.launch.half2_ok(x, pw)
    assert not tk.launch.half2_ok(x.float(), pw)
    assert not tk.launch.int4_ok(x, pw)
    assert not tk.launch.mma16_ok(torch.zeros(4, 512, dtype=torch.float16, device=tk.device), pw)


def test_lane_table_holds_the_code_book_in_both_halves_for_every_lane(tk):
    layer = make_layer(8, 256, "fp4")
    lanes = tk.layout.lane_table(layer.code)
    assert lanes.shape == (32,) and lanes.dtype == torch.int32
    halves = torch.stack([lanes & 0xFFFF, (lanes >> 16) & 0xFFFF]).to(torch.int16).view(torch.float16)
    expect = layer.code.half()[torch.arange(32) % 16]
    assert torch.equal(halves[0], expect) and torch.equal(halves[1], expect)
