"""The mma.sync int4 kernel for 2..16 rows (mma16) vs kernels/reference.py. On CPU the MMA
is emulated from the same per-lane fragments; on the GPU this checks the lane layout."""
from __future__ import annotations

import pytest
import torch
from int_layers import check, make_layer, ref_out, repack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("m,gs,sym,n,k,bn,split", [
    (16, 128, False, 64, 512, 32, 1),
    (3, 128, True, 40, 1024, 32, 2),  # ragged N, split-K
    (9, -1, False, 64, 768, 64, 1),  # per channel, two column halves
    (2, 256, False, 96, 1280, 32, 3),  # K % 256 != 0
])
def test_mma16(tk, m, gs, sym, n, k, bn, split):
    layer = make_layer(n, k, 4, gs, sym, bias=m == 3, seed=m + k, device=tk.device)
    x = torch.randn(m, k, device=tk.device).half()
    pw = repack(tk, layer, bn)
    assert tk.launch.mma16_ok(x, pw)
    y = tk.launch.mma16(x, pw, layer.bias, tk.launch.Mma16Config(split=split))
    check(y, ref_out(x, layer), x)


def test_mma16_refuses_what_it_cannot_take(tk):
    x = torch.randn(4, 512, device=tk.device).half()
    assert not tk.launch.mma16_ok(x, repack(tk, make_layer(32, 512, 4, 64, False, device=tk.device), 32))  # g64
    assert not tk.launch.mma16_ok(x, repack(tk, make_layer(32, 512, 4, 128, False, act_order=True,
                                                           device=tk.device), 32))
    assert not tk.launch.mma16_ok(torch.randn(17, 512, device=tk.device).half(),
                                  repack(tk, make_layer(32, 512, 4, 128, False, device=tk.device), 32))
