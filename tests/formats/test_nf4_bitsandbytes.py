"""lowbit's NF4/FP4 against bitsandbytes' own quantize_4bit (CPU backend), when installed."""
import pytest
import torch

from lowbit.formats import nf4

F = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not installed (pip install bitsandbytes)")


@pytest.mark.parametrize("shape", [(96, 128), (33, 70), (4096,)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_codes_and_absmax_equal_bitsandbytes(shape, double_quant):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 0.05
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    ours = nf4.quantize_4bit(w, "nf4", 64, double_quant)
    assert torch.equal(packed.reshape(-1), ours.packed)
    if double_quant:
        assert torch.equal(state.state2.absmax, ours.nested.absmax)
        assert torch.equal(state.offset, ours.nested.offset)
        assert torch.equal(state.state2.code, nf4.dynamic_code())
        _assert_same_nearest_codes(state.absmax, ours.nested, nf4.blockwise_absmax(w, 64))
        torch.testing.assert_close(F.dequantize_4bit(packed, state).reshape(shape), ours.dequantize(),
                                   rtol=2e-3, atol=0)
    else:
        assert torch.equal(state.absmax, ours.absmax)
        assert torch.equal(F.dequantize_4bit(packed, state).reshape(shape), ours.dequantize())


def _assert_same_nearest_codes(theirs, nested, absmax):
    """bnb's CPU 8-bit quantizer uses an approximate binary search (csrc/cpu_ops.cpp,
    BinSearch Direct2) that can pick the farther of two almost equidistant codes; lowbit
    takes the nearest (as bnb's pure-torch backend does). Codes agree except at such near-ties."""
    code = nf4.dynamic_code()
    scaled = (absmax - nested.offset) / nested.absmax.repeat_interleave(256)[: absmax.numel()]
    d_ours = (code[nested.q.long()] - scaled).abs()
    d_theirs = (code[theirs.long()] - scaled).abs()
    assert torch.all(d_ours <= d_theirs)  # ours is never farther
    differ = theirs != nested.q
    assert differ.float().mean() < 0.02
    assert torch.all((theirs[differ].long() - nested.q[differ].long()).abs() == 1)
    gap = (code[theirs[differ].long()] - code[nested.q[differ].long()]).abs()
    assert torch.all(d_theirs[differ] - d_ours[differ] < 0.1 * gap)  # near-ties only

def test_code_books_equal_bitsandbytes():
    assert torch.equal(F.get_4bit_type("nf4", device="cpu"), nf4.code_book("nf4"))
    assert torch.equal(F.get_4bit_type("fp4", device="cpu"), nf4.code_book("fp4"))
    assert torch.equal(F.create_dynamic_map(signed=True), nf4.dynamic_code())


def test_fp4_equals_bitsandbytes_up_to_the_sign_of_zero():
    # bnb's CPU ("default") backend maps tiny values to the zero of the other sign (an
    # argsort artifact); its CUDA kernel and lowbit give a zero the value's sign. Values agree.
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(0))
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="fp4", compress_statistics=False)
    ours = nf4.quantize_4bit(w, "fp4", 64, False)
    theirs = nf4.unpack_nibbles(packed.reshape(-1), w.numel())
    assert torch.equal(theirs & 0x7 == 0, ours.codes() & 0x7 == 0)
    nonzero = (ours.codes() & 0x7) != 0
    assert torch.equal(theirs[nonzero], ours.codes()[nonzero])
    assert torch.equal(F.dequantize_4bit(packed, state), ours.dequantize())
