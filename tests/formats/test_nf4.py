"""NF4/FP4 code books, blockwise absmax quantization, nibble packing, double quantization."""
import math

import pytest
import torch

from lowbit.formats import nf4

# Published values (QLoRA appendix E / bitsandbytes get_4bit_type), written out here
# independently of lowbit's table.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]
PUBLISHED_FP4 = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3]


def _w(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_code_books_equal_the_published_values():
    assert nf4.code_book("nf4").tolist() == torch.tensor(PUBLISHED_NF4, dtype=torch.float32).tolist()
    fp4 = torch.tensor(PUBLISHED_FP4, dtype=torch.float32) / 12
    assert torch.equal(nf4.code_book("fp4"), fp4)
    assert torch.equal(torch.signbit(nf4.code_book("fp4")), torch.signbit(fp4))  # code 8 is -0


def test_nf4_values_are_normal_quantiles():
    # QLoRA: NF4 = normalized N(0,1) quantiles, 8 positive (offset 0.9677) and 7 negative + exact 0.
    normal = torch.distributions.Normal(0.0, 1.0)
    offset = 0.9677083
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    torch.testing.assert_close((v / v.abs().max()).float(), nf4.code_book("nf4"), rtol=0, atol=1e-6)


def test_dynamic_code_shape_and_range():
    c = nf4.dynamic_code()
    assert c.shape == (256,) and c.dtype == torch.float32
    assert torch.all(c[1:] >= c[:-1]) and c.max() == 1 and c.min() > -1 and (c == 0).any()
    assert c.abs()[c != 0].min() < 1e-6  # dense near zero: small absmax survive


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_codes_are_nearest_values(quant_type):
    code = nf4.code_book(quant_type)
    x = torch.linspace(-1, 1, 4001)
    idx = nf4.nearest_code(x, code)
    err = (code[idx] - x).abs()
    best = (code[None, :] - x[:, None]).abs().min(dim=1).values
    assert torch.equal(err, best)


def test_pack_unpack_round_trip_and_nibble_order():
    codes = torch.randint(0, 16, (1001,), generator=torch.Generator().manual_seed(1), dtype=torch.int64).to(torch.uint8)
    packed = nf4.pack_nibbles(codes)
    assert packed.shape == (501,) and packed.dtype == torch.uint8
    assert torch.equal(nf4.unpack_nibbles(packed, 1001), codes)
    assert nf4.pack_nibbles(torch.tensor([0x3, 0xA], dtype=torch.uint8)).item() == 0x3A  # first code high


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("shape", [(64, 128), (33, 70), (1000,)])
def test_blockwise_round_trip_error_bound(quant_type, shape):
    w = _w(*shape)
    q = nf4.quantize_4bit(w, quant_type, 64, double_quant=False)
    n = w.numel()
    assert q.packed.shape == (math.ceil(n / 2),) and q.absmax.shape == (math.ceil(n / 64),)
    flat = w.reshape(-1)
    absmax = torch.nn.functional.pad(flat.abs(), (0, q.absmax.numel() * 64 - n)).view(-1, 64).amax(1)
    assert torch.equal(q.absmax, absmax)
    w_hat = q.dequantize()
    code = nf4.code_book(quant_type).sort().values
    half_gap = ((code[1:] - code[:-1]).max() / 2).item()
    bound = absmax.repeat_interleave(64)[:n] * half_gap * (1 + 1e-6)
    assert torch.all((w_hat.reshape(-1) - flat).abs() <= bound)
    # each block's largest element is represented exactly (code +-1 at absmax; NF4 and FP4 hold +-1)
    blocks = torch.nn.functional.pad(flat, (0, q.absmax.numel() * 64 - n)).view(-1, 64)
    arg = blocks.abs().argmax(1) + torch.arange(blocks.shape[0]) * 64
    torch.testing.assert_close(w_hat.reshape(-1)[arg], flat[arg], rtol=1e-6, atol=0)
    # re-quantizing the dequantized tensor gives the same codes (idempotent)
    assert torch.equal(nf4.quantize_4bit(w_hat, quant_type, 64, False).packed, q.packed)


def test_nf4_error_is_lower_than_fp4_on_normal_weights():
    w = _w(256, 512, scale=0.02)
    err = {t: (nf4.quantize_4bit(w, t, 64, False).dequantize() - w).pow(2).mean() for t in ("nf4", "fp4")}
    assert err["nf4"] < err["fp4"]
    sqnr = 10 * torch.log10(w.pow(2).mean() / err["nf4"])
    assert sqnr > 18  # ~20 dB for 4-bit NF4 at block 64


def test_all_zero_block_and_odd_length():
    w = torch.zeros(130)
    w[-1] = 2.0
    q = nf4.quantize_4bit(w, "nf4", 64, double_quant=False)
    assert q.absmax.tolist() == [0.0, 0.0, 2.0]
    assert torch.equal(q.dequantize(), w)


def test_double_quant_size_and_error():
    w = _w(512, 1024, scale=0.02)
    single = nf4.quantize_4bit(w, "nf4", 64, double_quant=False)
    double = nf4.quantize_4bit(w, "nf4", 64, double_quant=True)
    assert torch.equal(single.packed, double.packed)  # codes are computed from the exact absmax
    nb = single.absmax.numel()
    nested = double.nested
    assert nested.q.dtype == torch.uint8 and nested.q.shape == (nb,)
    assert nested.absmax.shape == (math.ceil(nb / 256),) and nested.offset.shape == ()
    bytes_single = single.packed.numel() + 4 * nb
    bytes_double = single.packed.numel() + nb + 4 * nested.absmax.numel() + 4
    bits_single = 8 * bytes_single / w.numel()
    bits_double = 8 * bytes_double / w.numel()
    assert bits_single == pytest.approx(4.5)
    assert bits_double == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-4)
    assert bits_single - bits_double == pytest.approx(0.373, abs=0.002)  # QLoRA: "about 0.37"
    # absmax error: the 8-bit dynamic code keeps each within ~1% of the block's range
    absmax_hat = double.absmax_float()
    rel = (absmax_hat - single.absmax).abs() / single.absmax
    assert rel.max() < 0.02
    torch.testing.assert_close(nested.offset, single.absmax.mean())
    # the weights lose almost nothing more
    e1 = (single.dequantize() - w).pow(2).mean()
    e2 = (double.dequantize() - w).pow(2).mean()
    assert e2 < e1 * 1.02


def test_rejects_unknown_type_and_bad_blocksize():
    with pytest.raises(ValueError, match="unknown 4-bit quant type"):
        nf4.quantize_4bit(torch.ones(4), "nf3")
    with pytest.raises(ValueError, match="blocksize"):
        nf4.quantize_4bit(torch.ones(4), "nf4", blocksize=63)
