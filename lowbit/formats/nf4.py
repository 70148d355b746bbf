"""4-bit NormalFloat (NF4) and 4-bit float (FP4) with blockwise absmax scaling, and double
quantization of the absmax values, as in QLoRA (Dettmers et al. 2023) and bitsandbytes.

A tensor of n elements is flattened (row-major) and cut into blocks of ``blocksize``
consecutive elements (the last block may be shorter). Each block stores its absmax as
float32; each element stores the index (0..15) of the code-book value nearest to
x / absmax. Two codes share a byte, the FIRST code in the HIGH nibble (bitsandbytes' order).
Dequantized: x_hat = code[q] * absmax[block].

Double quantization (QLoRA section 3) quantizes the float32 absmax values themselves:
subtract their mean (``offset``), then 8-bit blockwise quantization with blocks of 256
using bitsandbytes' signed "dynamic" 8-bit code (``dynamic_code``). It saves
32/64 - 8/64 - 32/(64*256) = 0.373 bits per parameter at blocksize 64.

Imports nothing of lowbit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

#: NF4: quantiles of N(0, 1) normalized to [-1, 1], with an exact zero (QLoRA appendix E;
#: the float32 values bitsandbytes ships). Sorted ascending: code i is the i-th value.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
#: FP4 (E2M1 with bitsandbytes' bias, no inf/nan): bit 3 is the sign; magnitudes
#: {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12 for codes 0..7. Not sorted: index = bit pattern.
FP4_CODE = tuple(
    [v / 12.0 for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)]
    + [-v / 12.0 for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)]
)
CODE_BOOKS = {"nf4": NF4_CODE, "fp4": FP4_CODE}
QUANT_TYPES = tuple(CODE_BOOKS)

DEFAULT_BLOCKSIZE = 64
#: Block size and bit width of the second-level (absmax) quantization, as in QLoRA.
NESTED_BLOCKSIZE = 256


def code_book(quant_type: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 values of ``quant_type`` ("nf4" | "fp4"), float32 [16], index = 4-bit code."""
    return _code_book(quant_type, str(device or "cpu"))


@lru_cache(maxsize=None)
def _code_book(quant_type: str, device: str) -> torch.Tensor:
    if quant_type not in CODE_BOOKS:
        raise ValueError(f"unknown 4-bit quant type {quant_type!r}: choose one of {', '.join(QUANT_TYPES)}")
    return torch.tensor(CODE_BOOKS[quant_type], dtype=torch.float32, device=device)


def dynamic_code(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (Dettmers 2016), float32 [256], sorted.

    For decade e = 0..6 it holds the 2^e midpoints of linspace(0.1, 1, 2^e + 1) scaled by
    10^(e-6), with both signs; plus 0 and 1. Dense near 0, so small absmax survive.
    """
    return _dynamic_code(str(device or "cpu"))


@lru_cache(maxsize=None)
def _dynamic_code(device: str) -> torch.Tensor:
    values: list[float] = []
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        decade = (10 ** (e - 6)) * mids  # float32, as bitsandbytes computes it
        values += decade.tolist() + (-decade).tolist()
    values += [0.0, 1.0]
    return torch.tensor(sorted(values), dtype=torch.float32, device=device)


def num_blocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def blockwise_absmax(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """float32 [ceil(n/blocksize)]: max |x| of each block of the flattened x."""
    return _blocks(x.reshape(-1).float(), blocksize).abs().amax(dim=1)


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """int64 index of the code value nearest to each element of ``scaled`` (in [-1, 1]).

    Ties (a value exactly on a midpoint) go to the smaller code value. FP4's code book is
    not sorted and holds +0 and -0: it is searched in sorted order and mapped back, and a
    value that rounds to zero takes the zero of its own sign (as bitsandbytes' CUDA kernel
    does; -0.0 counts as negative, so dequantized tensors re-quantize to the same codes).
    """
    order = torch.sort(code, stable=True).indices
    srt = code[order]
    keep = torch.ones_like(srt, dtype=torch.bool)
    keep[1:] = srt[1:] != srt[:-1]  # one entry per distinct value: -0 == +0
    mids = (srt[keep][:-1] + srt[keep][1:]) / 2
    idx = order[keep][_bucketize(scaled, mids)]
    zeros = (code == 0).nonzero().flatten()
    if zeros.numel() == 2:
        pos, neg = (zeros[0], zeros[1]) if not torch.signbit(code[zeros[0]]) else (zeros[1], zeros[0])
        idx = torch.where(code[idx] == 0, torch.where(torch.signbit(scaled), neg, pos), idx)
    return idx


def _bucketize(x: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """torch.bucketize(x, mids) (count of mids < x); for the 15 midpoints of a 4-bit code a
    few vectorized comparisons beat a binary search per element."""
    if mids.numel() > 16:
        return torch.bucketize(x, mids)
    idx = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for m in mids:
        idx += x > m
    return idx.long()


def _blocks(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """[nb, blocksize] view of a flat tensor, zero-padded to whole blocks."""
    pad = num_blocks(flat.numel(), blocksize) * blocksize - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes uint8 [n] (flattened x) and absmax float32 [ceil(n/blocksize)]."""
    flat = x.reshape(-1).float()
    blocks = _blocks(flat, blocksize)  # [nb, blocksize]
    absmax = blocks.abs().amax(dim=1)
    inv = 1.0 / absmax.clamp_min(1e-38)  # an all-zero block scales by anything: its codes are 0
    scaled = (blocks * inv[:, None]).clamp(-1, 1).reshape(-1)[: flat.numel()]
    return nearest_code(scaled, code.to(flat.device)).to(torch.uint8), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int, n: int | None = None
) -> torch.Tensor:
    """float32 [n]: code[codes] * absmax of each element's block (codes: integer [>= n])."""
    n = codes.numel() if n is None else n
    values = code.to(absmax.device)[codes.reshape(-1)[:n].long()]  # [n]
    return (_blocks(values, blocksize) * absmax[:, None]).reshape(-1)[:n]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [ceil(n/2)] from 4-bit codes [n]: element 2i in the high nibble, 2i+1 low."""
    c = codes.reshape(-1).to(torch.uint8)
    if c.numel() % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    return (c[0::2] << 4) | c[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [n] codes from bytes packed by ``pack_nibbles``."""
    p = packed.reshape(-1)
    return torch.stack([p >> 4, p & 0xF], dim=1).reshape(-1)[:n]


@dataclass
class DoubleQuantized:
    """The absmax of a 4-bit tensor, quantized again (QLoRA's double quantization).

    q:       uint8 [nb]          indices into ``dynamic_code()``
    absmax:  float32 [ceil(nb/256)] per-block scale of (absmax - offset)
    offset:  float32 []          mean of the original absmax
    absmax_i = dynamic_code[q_i] * absmax[i // 256] + offset
    """

    q: torch.Tensor
    absmax: torch.Tensor
    offset: torch.Tensor
    blocksize: int = NESTED_BLOCKSIZE

    def dequantize(self) -> torch.Tensor:
        """float32 [nb]: the first-level absmax values."""
        return dequantize_absmax(self.q, self.absmax, self.offset, self.blocksize)


def double_quantize(absmax: torch.Tensor, blocksize: int = NESTED_BLOCKSIZE) -> DoubleQuantized:
    """Quantize float32 absmax [nb] to 8 bits: mean offset, then blockwise dynamic code."""
    offset = absmax.float().mean()
    q, absmax2 = quantize_blockwise(absmax.float() - offset, dynamic_code(absmax.device), blocksize)
    return DoubleQuantized(q, absmax2, offset, blocksize)


def dequantize_absmax(q: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      blocksize: int = NESTED_BLOCKSIZE) -> torch.Tensor:
    """float32 [nb] from the double-quantized absmax (see ``DoubleQuantized``)."""
    return dequantize_blockwise(q, absmax2, dynamic_code(q.device), blocksize) + offset.float()


@dataclass
class Quantized4bit:
    """A tensor in NF4/FP4.

    packed:  uint8 [ceil(n/2)]    two codes a byte, first in the high nibble
    absmax:  float32 [ceil(n/blocksize)], or None when ``nested`` holds it
    nested:  DoubleQuantized | None
    shape:   the original shape (n = prod(shape))
    """

    packed: torch.Tensor
    absmax: torch.Tensor | None
    nested: DoubleQuantized | None
    shape: tuple[int, ...]
    quant_type: str
    blocksize: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def absmax_float(self) -> torch.Tensor:
        """float32 [nb]: the absmax each block is scaled by (dequantized if nested)."""
        return self.nested.dequantize() if self.nested is not None else self.absmax

    def codes(self) -> torch.Tensor:
        """uint8 [n]: the 4-bit codes."""
        return unpack_nibbles(self.packed, self.numel)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor, in its original shape, in ``dtype``."""
        return dequantize_4bit(self.packed, self.absmax_float(), self.quant_type, self.blocksize,
                               self.shape, dtype)


def quantize_4bit(
    x: torch.Tensor, quant_type: str = "nf4", blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = True
) -> Quantized4bit:
    """Blockwise absmax NF4/FP4 quantization of any float tensor (flattened row-major)."""
    if blocksize < 2 or blocksize % 2:
        raise ValueError(f"blocksize {blocksize} must be an even number >= 2 (64 is the QLoRA default)")
    codes, absmax = quantize_blockwise(x, code_book(quant_type, x.device), blocksize)
    nested = double_quantize(absmax) if double_quant else None
    return Quantized4bit(pack_nibbles(codes), None if double_quant else absmax, nested,
                         tuple(x.shape), quant_type, blocksize)


def dequantize_4bit(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    quant_type: str,
    blocksize: int,
    shape: tuple[int, ...] | torch.Size,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Tensor of ``shape`` in ``dtype`` from packed uint8 codes and float32 absmax [nb].

    The product code * absmax is formed in float32, then cast (as bitsandbytes does).
    """
    n = math.prod(shape)
    codes = unpack_nibbles(packed, n)
    return dequantize_blockwise(codes, absmax.float(), code_book(quant_type, packed.device), blocksize, n
                                ).reshape(shape).to(dtype)


__all__ = [
    "CODE_BOOKS", "DEFAULT_BLOCKSIZE", "FP4_CODE", "NESTED_BLOCKSIZE", "NF4_CODE", "QUANT_TYPES",
    "DoubleQuantized", "Quantized4bit", "blockwise_absmax", "code_book", "dequantize_4bit",
    "dequantize_absmax", "dequantize_blockwise", "double_quantize", "dynamic_code", "nearest_code",
    "num_blocks", "pack_nibbles", "quantize_4bit", "quantize_blockwise", "unpack_nibbles",
]
