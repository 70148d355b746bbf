"""Triton int kernels vs kernels/reference.py (interpreted on CPU, compiled on CUDA)."""
from __future__ import annotations

import logging

import pytest
import torch
from int_layers import check, make_layer, ref_out, repack

from lowbit.formats import unpack


@pytest.mark.parametrize("bits,gs,sym,act", [(4, 128, False, False), (4, 64, True, True), (8, -1, False, False),
                                             (2, 32, False, True)])
def test_repack_layout(tk, bits, gs, sym, act):
    """Decoding the packed words in torch gives the codes in kernel order (pure torch)."""
    n, k = 20, 576
    layer = make_layer(n, k, bits, gs, sym, act)
    pw = repack(tk, layer, 16)
    cpw, pk = 32 // bits, tk.layout.PK
    words = pw.qweight.permute(1, 2, 0, 3).reshape(pw.chunks, pk, -1)  # [KC, PK, NB*BN]
    codes = torch.stack([(words >> (bits * j)) & (2**bits - 1) for j in range(cpw)], dim=1)  # [KC, CPW, PK, .]
    codes = codes.reshape(pw.chunks * cpw * pk, -1)[:k, :n]
    q = unpack(layer.qweight, bits, k, dim=0).long()
    perm = torch.arange(k) if pw.perm is None else pw.perm.long()
    assert torch.equal(codes, q[perm])
    assert (pw.perm is not None) == act
    assert (pw.zeros is None) == sym
    groups = layer.g_idx.long()[perm]
    assert torch.equal(groups, torch.arange(k) // pw.group_size)  # kernel order: groups in runs


def test_repack_refuses(tk):
    with pytest.raises(tk.layout.Unsupported, match="straddle"):
        repack(tk, make_layer(8, 256, 3, 64, False), 16)
    with pytest.raises(tk.layout.Unsupported, match="power of two"):
        repack(tk, make_layer(8, 192, 4, 96, False), 16)
    layer = make_layer(8, 256, 4, 64, False)
    layer.g_idx = torch.zeros(256, dtype=torch.int32)  # one group of 256 columns: not groups of 64
    with pytest.raises(tk.layout.Unsupported, match="act-order"):
        repack(tk, layer, 16)


@pytest.mark.parametrize("bits,gs,sym,act,n,k,m,bn,cfg", [
    (4, 128, False, False, 40, 512, 1, 32, dict(chunks=1, split=1)),
    (4, 64, True, True, 24, 576, 3, 16, dict(chunks=1, split=2)),  # ragged group, K % 256 != 0
    (8, -1, False, False, 20, 256, 1, 16, dict(chunks=2, split=1)),
    (2, 32, False, True, 16, 512, 1, 16, dict(chunks=1, split=1)),
])
def test_gemv(tk, bits, gs, sym, act, n, k, m, bn, cfg):
    layer = make_layer(n, k, bits, gs, sym, act, bias=bits == 4, seed=bits, device=tk.device)
    x = torch.randn(m, k, device=tk.device).half()
    y = tk.launch.gemv(x, repack(tk, layer, bn), layer.bias, tk.launch.GemvConfig(**cfg))
    check(y, ref_out(x, layer), x)


@pytest.mark.parametrize("m,cfg", [
    (3, dict(bm=16, bnt=32)),
    (16, dict(bm=16, bnt=64, swap=True)),
    (17, dict(bm=16, bnt=32, split=2)),
    (64, dict(bm=32, bnt=32)),
    (257, dict(bm=64, bnt=64)),
])
def test_gemm(tk, m, cfg):
    layer = make_layer(48, 512, 4, 128, False, act_order=m in (17, 257), bias=m == 3, seed=m, device=tk.device)
    x = torch.randn(m, 512, device=tk.device).half()
    y = tk.launch.gemm(x, repack(tk, layer, 16), layer.bias, tk.launch.GemmConfig(**cfg))
    check(y, ref_out(x, layer), x)


@pytest.mark.parametrize("bits,gs,sym,act,k", [(4, 64, False, True, 576), (8, -1, True, False, 256)])
def test_dequant_matmul(tk, bits, gs, sym, act, k):
    """Large-M path: decode W once (kernel order), permute x's columns, one matmul."""
    layer = make_layer(40, k, bits, gs, sym, act, bias=True, device=tk.device)
    x = torch.randn(5, k, device=tk.device).half()
    y = tk.launch.dequant_matmul(x if tk.gpu else x.float(), repack(tk, layer, 32), layer.bias, tk.launch.DequantConfig())
    check(y.to(x.dtype), ref_out(x, layer), x)


def test_splitk_leaves_workspace_zero(tk):
    """The last program of a tile reads the sums and zeroes them: the next call needs no memset."""
    layer = make_layer(32, 512, 4, 64, False, device=tk.device)
    pw = repack(tk, layer, 16)
    x = torch.randn(1, 512, device=tk.device).half()
    for _ in range(2):  # the second call would double-count if the first left anything behind
        y = tk.launch.gemv(x, pw, None, tk.launch.GemvConfig(split=2))
        check(y, ref_out(x, layer), x)
    ws, cnt = tk.launch.splitk_buffers(tk.device, 32, 2)
    assert not ws.any() and not cnt.any()


def test_guards_say_why(tk, caplog):
    layer = make_layer(16, 256, 4, 64, False)
    x = torch.randn(2, 256).half()
    problem = tk.linear.input_problem
    assert "dtype" in problem(x.float(), 256, layer.qweight)
    assert "shape" in problem(x[:, :128], 256, layer.qweight)
    assert "non-contiguous" in problem(torch.randn(256, 2).half().t(), 256, layer.qweight)
    assert "CUDA" in problem(x, 256, layer.qweight)
    with caplog.at_level(logging.INFO, logger="lowbit.kernels.triton.linear"):
        assert tk.linear.int_group(x, layer) is None
        assert tk.linear.int_group(x, layer) is None
    assert sum("CUDA" in r.message for r in caplog.records) == 1  # logged once


def test_unsupported_layer_is_cached_and_refused(tk):
    layer = make_layer(8, 256, 3, 64, False)
    assert tk.linear.prepare_int_group(layer) is None
    assert "straddle" in layer.__dict__["_lowbit_triton"].why
    assert "_lowbit_triton" not in layer.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the dispatch path)")
@pytest.mark.parametrize("dtype,bits,gs,sym,act", [
    (torch.float16, 4, 128, False, False), (torch.bfloat16, 4, 128, False, False), (torch.float16, 4, 32, True, True),
    (torch.float16, 4, -1, False, False), (torch.float16, 8, 128, False, False), (torch.bfloat16, 8, -1, True, False),
    (torch.float16, 4, 64, False, True), (torch.float16, 2, 64, False, False),
])
def test_gpu_dispatch(tk, dtype, bits, gs, sym, act):
    """QuantLinear.forward on CUDA goes through the Triton kernels for every M."""
    from lowbit.kernels import KERNELS

    for n, k in [(96, 1024), (4096 + 64, 768), (200, 4096)]:
        layer = make_layer(n, k, bits, gs, sym, act, bias=n == 200, seed=n + k, device="cuda")
        for m in (1, 3, 16, 17, 64, 257, 600):  # 600: the dequantize + cuBLAS path
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            y = layer(x)
            assert tk.linear.int_group in KERNELS["int_group"]
            assert layer.__dict__["_lowbit_triton"].packed is not None
            ref = ref_out(x, layer)
            err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
            assert err < (2e-2 if dtype == torch.bfloat16 else 4e-3), (n, k, m, err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the dispatch path)")
def test_gpu_bad_input_falls_back(tk):
    layer = make_layer(64, 512, 4, 128, False, device="cuda")
    x = torch.randn(512, 4, device="cuda", dtype=torch.float16).t()  # non-contiguous
    assert tk.linear.int_group(x, layer) is None
    check(layer(x), ref_out(x, layer), x)  # the fp16 reference path, to fp16 accuracy
    assert tk.linear.int_group(x.float(), layer) is None  # fp32: reference
    assert layer(x.float()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (graph capture)")
def test_gpu_cuda_graph_with_split_k(tk):
    layer = make_layer(1024, 4096, 4, 128, False, device="cuda")
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    y0 = layer(x)  # repack + compile + workspace, outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layer(x)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        ref = ref_out(x, layer)
        assert (y.float() - ref).abs().max().item() / ref.abs().max().item() < 4e-3
    assert y0.shape == y.shape
