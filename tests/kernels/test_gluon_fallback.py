"""A Triton that cannot compile one of the Gluon kernels (Gluon is an experimental API)
gets one warning, and that kernel's rows go to the other kernels for the rest of the
process (``linear._try_gluon``)."""
from __future__ import annotations

import pytest
import torch
from int_layers import make_layer, repack

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kernel,rows,error", [
    ("mma16", 4, "AttributeError: no gl.BlockedLayout here"),
    ("wgmma", 128, "AttributeError: no warpgroup_mma here"),
])
def test_a_triton_that_cannot_compile_a_gluon_kernel_falls_back_for_good(tk, monkeypatch, caplog, kernel, rows,
                                                                         error):
    from triton.compiler.errors import CompilationError

    def reject(*args, **kwargs):
        raise CompilationError(None, None, error)

    module = getattr(tk, kernel)
    monkeypatch.setattr(tk.launch, kernel, reject)
    monkeypatch.setattr(module, "AVAILABLE", module.AVAILABLE)  # restored after the test
    pw = repack(tk, make_layer(32, 512, 4, 128, False, device=tk.device), 32)
    x = torch.randn(rows, 512, device=tk.device).half()
    with caplog.at_level("WARNING", logger="lowbit.kernels.triton.linear"):
        assert getattr(tk.linear, f"_try_{kernel}")(x, pw, None) is None
    assert "does not compile" in caplog.text and error.split(": ")[1] in caplog.text
    assert not module.AVAILABLE and not getattr(tk.launch, f"{kernel}_ok")(x, pw)
