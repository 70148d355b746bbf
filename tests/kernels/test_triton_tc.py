"""The tiled tensor-core kernel (gemm_tc) vs kernels/reference.py (interpreted on CPU)."""
from __future__ import annotations

import pytest
import torch
import nf4_layers
from int_layers import check, make_layer, ref_out, repack


@pytest.mark.parametrize("bits,gs,sym,act,n,k,m,bn,cfg", [
    # M, tile, step depth and split-K; N = 40 with 16-column blocks: a tile of 32 spans two
    # blocks and the last tile a missing one; K = 576: a partial chunk and a ragged group.
    (4, 128, False, False, 40, 512, 3, 16, dict(bm=16, bnt=32, bk=64, swap=True)),
    (4, 128, False, False, 48, 512, 16, 16, dict(bm=16, bnt=32, bk=128, split=3, scale_after=True)),
    (4, 64, False, True, 40, 576, 17, 16, dict(bm=16, bnt=32, bk=256, split=2)),
    (4, 128, True, False, 48, 512, 64, 16, dict(bm=32, bnt=48, bk=32, scale_after=True, swap=True)),
    (4, 32, False, True, 40, 576, 257, 16, dict(bm=64, bnt=64, bk=64)),
    (8, -1, False, False, 40, 256, 5, 16, dict(bm=16, bnt=32, bk=128, scale_after=True)),
    (2, 64, False, True, 32, 512, 20, 16, dict(bm=16, bnt=32, bk=64, split=2)),
    (4, 128, False, False, 24, 512, 1, 8, dict(bm=16, bnt=16, bk=32, split=4, swap=True, scale_after=True)),
    # flat decode: one group per step, several groups per step (ragged), 8-bit, swapped
    (4, 128, False, False, 40, 512, 33, 16, dict(bm=32, bnt=32, bk=64, flat=True)),
    (4, 32, False, True, 40, 576, 16, 16, dict(bm=16, bnt=32, bk=128, flat=True, split=2)),
    (8, 64, True, False, 40, 256, 5, 16, dict(bm=16, bnt=32, bk=64, flat=True, swap=True, scale_after=True)),
])
def test_gemm_tc(tk, bits, gs, sym, act, n, k, m, bn, cfg):
    layer = make_layer(n, k, bits, gs, sym, act, bias=m % 2 == 1, seed=m + bits, device=tk.device)
    x = torch.randn(m, k, device=tk.device).half()
    y = tk.launch.gemm_tc(x, repack(tk, layer, bn), layer.bias, tk.launch.TcConfig(**cfg))
    check(y, ref_out(x, layer), x)


def test_gemm_tc_splitk_leaves_workspace_zero(tk):
    layer = make_layer(32, 512, 4, 128, False, device=tk.device)
    pw = repack(tk, layer, 16)
    x = torch.randn(4, 512, device=tk.device).half()
    for _ in range(2):
        y = tk.launch.gemm_tc(x, pw, None, tk.launch.TcConfig(bm=16, bnt=16, bk=64, split=4))
        check(y, ref_out(x, layer), x)
    ws, cnt = tk.launch.splitk_buffers(tk.device, 32, 2)
    assert not ws.any() and not cnt.any()


@pytest.mark.parametrize("quant_type,scale_after,flat", [("nf4", True, False), ("fp4", False, True),
                                                         ("nf4", False, False)])
def test_gemm_tc_nf4(tk, quant_type, scale_after, flat):
    layer = nf4_layers.make_layer(40, 512, quant_type, 64, bias=True, seed=3, device=tk.device)
    x = torch.randn(18, 512, device=tk.device).half()
    y = tk.launch.gemm_tc(x, nf4_layers.repack(tk, layer), layer.bias,
                          tk.launch.TcConfig(bm=16, bnt=32, bk=128 if flat else 64, scale_after=scale_after, flat=flat))
    nf4_layers.check(y, nf4_layers.ref_out(x, layer))


def test_tc_shape_rounds_to_the_layout(tk):
    layer = make_layer(40, 512, 4, 128, False)
    pw = repack(tk, layer, 32)
    assert tk.launch.tc_shape(tk.launch.TcConfig(bnt=16, bk=512), pw) == (32, 256)
    assert tk.launch.tc_shape(tk.launch.TcConfig(bnt=80, bk=16), pw) == (128, 32)
