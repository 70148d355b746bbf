"""Packing of b-bit codes into int32 words, and back.

Codes are laid out as one little-endian bit stream along the packed dimension: the first
code sits in the lowest bits of the first word. For 2, 4 and 8 bits this is the familiar
``32 / bits`` codes per word; for 3 bits a code may straddle two words (32 codes fill exactly
three words), which is the layout of GPTQ's 3-bit checkpoints. A length that does not fill
the last word is padded with zero codes; ``unpack`` takes the true length back.
"""
from __future__ import annotations

import torch

from .int_group import check_bits


def packed_length(length: int, bits: int) -> int:
    """Number of int32 words that hold ``length`` codes of ``bits`` bits."""
    return -(-length * bits // 32)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> int32 with the same bit pattern."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack(codes: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) along ``dim`` into int32 words.

    codes: integer tensor [..., L, ...]; returns int32 [..., packed_length(L, bits), ...].
    """
    check_bits(bits)
    x = codes.movedim(dim, -1).to(torch.int64)
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits}-bit packing: [{int(x.min())}, {int(x.max())}]")
    length = x.shape[-1]
    words = packed_length(length, bits)
    if 32 % bits == 0:
        per_word = 32 // bits
        x = torch.nn.functional.pad(x, (0, words * per_word - length))
        x = x.reshape(*x.shape[:-1], words, per_word)
        shifts = torch.arange(0, 32, bits, device=x.device)
        packed = (x << shifts).sum(dim=-1)
    else:
        # General bit stream: expand each code into its bits, regroup the bits 32 at a time.
        bit_pos = torch.arange(bits, device=x.device)
        stream = ((x.unsqueeze(-1) >> bit_pos) & 1).flatten(-2)
        stream = torch.nn.functional.pad(stream, (0, words * 32 - stream.shape[-1]))
        stream = stream.reshape(*stream.shape[:-1], words, 32)
        packed = (stream << torch.arange(32, device=x.device)).sum(dim=-1)
    return _to_int32(packed).movedim(-1, dim)


def unpack(words: torch.Tensor, bits: int, length: int, dim: int = -1) -> torch.Tensor:
    """Inverse of ``pack``: int32 words along ``dim`` -> uint8 codes [..., length, ...]."""
    check_bits(bits)
    x = words.movedim(dim, -1)
    if x.shape[-1] != packed_length(length, bits):
        raise ValueError(
            f"{x.shape[-1]} packed words cannot hold exactly {length} codes of {bits} bits "
            f"(expected {packed_length(length, bits)} words)"
        )
    mask = 2**bits - 1
    if 32 % bits == 0:
        # int32 arithmetic shifts drag the sign bit along; the mask drops it again.
        shifts = torch.arange(0, 32, bits, device=x.device, dtype=torch.int32)
        codes = ((x.to(torch.int32).unsqueeze(-1) >> shifts) & mask).flatten(-2)
    else:
        x = x.to(torch.int64) & 0xFFFFFFFF
        stream = ((x.unsqueeze(-1) >> torch.arange(32, device=x.device)) & 1).flatten(-2)
        usable = stream.shape[-1] // bits * bits
        stream = stream[..., :usable].reshape(*stream.shape[:-1], usable // bits, bits)
        codes = (stream << torch.arange(bits, device=x.device)).sum(dim=-1)
    return codes[..., :length].to(torch.uint8).movedim(-1, dim)
