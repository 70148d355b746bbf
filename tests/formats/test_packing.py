"""lowbit.formats.packing: codes <-> int32 words."""
import pytest
import torch

from lowbit.formats import pack, packed_length, unpack


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 31, 32, 96, 100, 576])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack_unpack_round_trip_is_exact(bits, length, dim):
    g = torch.Generator().manual_seed(bits * 1000 + length)
    shape = (length, 5) if dim == 0 else (5, length)
    codes = torch.randint(0, 2**bits, shape, generator=g).to(torch.uint8)
    words = pack(codes, bits, dim=dim)
    assert words.dtype == torch.int32
    assert words.shape[dim] == packed_length(length, bits)
    assert torch.equal(unpack(words, bits, length, dim=dim), codes)


def test_first_code_sits_in_the_lowest_bits():
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 15], dtype=torch.uint8)
    (word,) = pack(codes, 4).tolist()
    assert word & 0xFFFFFFFF == 0xF7654321


def test_symmetric_4bit_zero_word_is_0x88888888():
    (word,) = pack(torch.full((8,), 8), 4).tolist()
    assert word & 0xFFFFFFFF == 0x88888888


def test_three_bit_codes_straddle_words_as_one_bit_stream():
    codes = torch.arange(32) % 8
    words = pack(codes, 3)
    assert words.shape == (3,)
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    expected = [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(3)]
    assert [w & 0xFFFFFFFF for w in words.tolist()] == expected


def test_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        pack(torch.tensor([16]), 4)


def test_wrong_word_count_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        unpack(torch.zeros(3, dtype=torch.int32), 4, 40)
