"""The GPU weight layout of the Triton kernels, and the repacking into it (plain torch).

Checkpoints keep their own layouts (GPTQ tensors for ``QuantLinear``, bitsandbytes bytes
for ``Linear4bit``); at first use a layer's weight is repacked once into this layout and
cached on the module (``prepared``), outside its state_dict.

Codes of ``bits`` bits (2, 4 or 8), CPW = 32 / bits codes to an int32 word. The input
dimension is read in *kernel order* kk: the original column is ``perm[kk]`` (act-order:
columns sorted by group; otherwise the identity and no table). Kernel order is cut into
chunks of KCH = CPW * PK columns; inside a chunk, code j (bits [bits*j, bits*(j+1))) of
word r holds column ``kk = c*KCH + j*PK + r``. So decoding code j of a [PK, n] tile of
words gives a whole [PK, n] slab of consecutive columns: the slab is directly an operand
of a tensor-core dot, no interleaving shuffle needed, and every slab lies in one group
when PK divides the group size.

    qweight  int32 [NB, KC, PK, BN]   NB = ceil(N / BN) column blocks, KC = ceil(K / KCH)
                                       chunks; one column block is one contiguous stream,
                                       so a program reading BN columns reads one run of memory
    scales   fp16/fp32 [G, N]          as stored (per group, per output column); NF4/FP4: the
                                       blocks' absmax, fp16 when every one is a normal fp16
    zeros    fp16 [G, N] or None       zero points as floats (exact small integers); None
                                       when every zero is 2^(bits-1) (symmetric)
    perm     int32 [K] or None         kernel order -> original column
    zero_pairs int32 [KC * A, N] or None  int4 with zeros only, for ``gemv_half2``: per chunk
                                       and group pair (A = half2_accumulators), the zero
                                       terms -(64 + zero / 16) of the pair's two groups as
                                       f16x2 (4 bytes a chunk and column, as the fp16 zeros)
Padding (columns >= N, kernel-order positions >= K) holds code 0; the kernels mask the
matching activations to 0, so it never contributes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...formats.packing import unpack

#: Words of one column per chunk: each decoded slab is [PK, BN] (the K depth of one dot).
PK = 32


class Unsupported(ValueError):
    """A layer the fast kernels do not take; the message says why (logged, then reference)."""


@dataclass
class PackedWeight:
    """A weight in the kernel layout (see the module docstring). ``mode``: "int" (affine
    codes: w = scale * (q - zero)) or "lut" (code book: w = lut[q] * scale, no zero)."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    perm: torch.Tensor | None
    lut: torch.Tensor | None
    n: int
    k: int
    bits: int
    group_size: int  # power of two; per-channel is stored as a power of two >= padded K
    block_n: int
    mode: str
    zero_pairs: torch.Tensor | None = None
    lanes: torch.Tensor | None = None  # lut mode: ``lane_table`` (gemv_half2, wgmma)

    @property
    def codes_per_word(self) -> int:
        return 32 // self.bits

    @property
    def chunks(self) -> int:
        return self.qweight.shape[1]

    @property
    def groups(self) -> int:
        return self.scales.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.zeros, self.perm, self.lut,
                                                                   self.zero_pairs, self.lanes)
                   if t is not None)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def kernel_group_size(k: int, group_size: int, bits: int) -> int:
    """The group size the kernels use (a power of two, a multiple of PK), or Unsupported."""
    kch = (32 // bits) * PK
    if group_size == -1 or group_size >= k:
        padded = -(-k // kch) * kch
        return 1 << (padded - 1).bit_length()  # one group covers every kernel-order column
    if not _pow2(group_size) or group_size % PK:
        # A slab of PK columns must sit inside one group, and group // PK is a shift.
        raise Unsupported(f"group size {group_size} is not a power of two >= {PK}")
    return group_size


def act_order_perm(g_idx: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """Columns sorted by group (int64 [K]), None when already sorted, Unsupported when the
    groups, once sorted, are not ``group_size`` consecutive columns each (GPTQ's act-order
    always gives that: g_idx[perm[i]] = i // group_size)."""
    k = g_idx.numel()
    g = g_idx.long()
    expected = torch.arange(k, device=g.device) // group_size
    if torch.equal(g, expected):
        return None
    perm = torch.argsort(g, stable=True)
    if not torch.equal(g[perm], expected):
        raise Unsupported("g_idx does not describe groups of group_size columns (not a GPTQ act-order permutation)")
    return perm


def half2_accumulators(group_size: int) -> int:
    """Distinct group pairs among the code pairs (j, j + 4) of a chunk: code j covers
    kernel-order columns c*256 + 32 j + [0, 32), so pairs share groups when GS >= 128."""
    return 4 // (group_size // PK) if group_size < 128 else 1


def half2_group_pairs(chunks: int, groups: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low groups, high groups), int64 [chunks * A] each: the groups of accumulator a of
    chunk c at index c * A + a (padding chunks clamp to the last group, as the kernels do)."""
    acc = half2_accumulators(group_size)
    c = torch.arange(chunks).repeat_interleave(acc)
    a = torch.arange(acc).repeat(chunks)
    lo = torch.clamp((c * 256 + 32 * (a * 4 // acc)) // group_size, max=groups - 1)
    hi = torch.clamp(lo + (128 // group_size if group_size <= 128 else 0), max=groups - 1)
    return lo, hi


def zero_pairs(zeros: torch.Tensor, chunks: int, group_size: int) -> torch.Tensor:
    """fp16 zero points [G, N] -> the f16x2 zero terms of ``gemv_half2``, int32 [KC * A, N]."""
    lo, hi = half2_group_pairs(chunks, zeros.shape[0], group_size)
    lo, hi = lo.to(zeros.device), hi.to(zeros.device)

    def term(g: torch.Tensor) -> torch.Tensor:  # -(64 + z / 16) is exact in fp16
        return (-(64 + zeros[g].float() / 16)).half().view(torch.int16).to(torch.int32) & 0xFFFF

    return (term(lo) | (term(hi) << 16)).contiguous()


def pack_words(q: torch.Tensor, bits: int, block_n: int) -> torch.Tensor:
    """Codes [K, N] (integer, already in kernel order) -> int32 [NB, KC, PK, BN]."""
    k, n = q.shape
    cpw = 32 // bits
    kch = cpw * PK
    kc, nb = -(-k // kch), -(-n // block_n)
    q = torch.nn.functional.pad(q.to(torch.int32), (0, nb * block_n - n, 0, kc * kch - k))
    q = q.view(kc, cpw, PK, nb * block_n)
    words = torch.zeros(kc, PK, nb * block_n, dtype=torch.int64, device=q.device)
    for j in range(cpw):  # one code position at a time: int64 stays at 8 bytes per word
        words |= q[:, j].to(torch.int64) << (bits * j)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits, int32
    return words.view(kc, PK, nb, block_n).permute(2, 0, 1, 3).contiguous()


def repack_int_group(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    group_size: int,
    block_n: int,
) -> PackedWeight:
    """QuantLinear buffers (GPTQ tensor layout, zeros stored as is) -> PackedWeight."""
    if bits not in (2, 4, 8):
        raise Unsupported(f"{bits}-bit codes straddle int32 words; the kernels decode whole words (2, 4, 8 bits)")
    k, n = g_idx.numel(), scales.shape[1]
    gs = kernel_group_size(k, group_size, bits)
    perm = None if gs >= k else act_order_perm(g_idx, gs)
    if gs >= k and bool((g_idx != 0).any()):
        raise Unsupported("per-channel layer with a g_idx that names more than one group")
    q = unpack(qweight, bits, k, dim=0)  # uint8 [K, N]
    if perm is not None:
        q = q[perm]
    z = unpack(qzeros, bits, n, dim=1)  # uint8 [G, N]
    zeros = None if bool((z == 2 ** (bits - 1)).all()) else z.to(torch.float16).contiguous()
    qw = pack_words(q, bits, block_n)
    return PackedWeight(
        qweight=qw,
        scales=scales.contiguous(),
        zeros=zeros,
        perm=None if perm is None else perm.to(torch.int32).contiguous(),
        lut=None,
        n=n, k=k, bits=bits, group_size=gs, block_n=block_n, mode="int",
        zero_pairs=zero_pairs(zeros, qw.shape[1], gs) if zeros is not None and bits == 4 else None,
    )


def _fits_half(t: torch.Tensor) -> bool:
    """Every value 0 or a normal fp16 number (2^-14 <= |v| <= 65504): exact to fp16 rounding."""
    a = t.abs()
    return bool(torch.isfinite(t).all() and (a <= 65504).all() and ((a == 0) | (a >= 2.0**-14)).all())


def lane_table(lut: torch.Tensor) -> torch.Tensor:
    """16-entry code book -> int32 [32]: entry l is f16x2 (lut[l % 16], lut[l % 16]), the
    value lane l of a warp holds for the shuffle lookup of ``gemv_half2`` and ``wgmma``."""
    bits = lut.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
    pair = bits | (bits << 16)  # int32 arithmetic: wraps to the same bits as the f16x2 word
    return pair.repeat(2).contiguous()


def repack_nf4(
    weight_4bit: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    n: int,
    k: int,
    blocksize: int,
    block_n: int,
) -> PackedWeight:
    """Linear4bit buffers (bitsandbytes bytes: W[n, 2i] in the high nibble) -> PackedWeight.

    absmax: float32 [N*K/blocksize], already un-double-quantized (done once, here).
    """
    if k % blocksize:
        raise Unsupported(f"in_features {k} is not a multiple of the block size {blocksize}: blocks straddle rows")
    if not _pow2(blocksize) or blocksize % PK:
        raise Unsupported(f"block size {blocksize} is not a power of two >= {PK}")
    b = weight_4bit.reshape(n, k // 2)
    q = torch.stack([b >> 4, b & 15], dim=2).reshape(n, k)  # [N, K]: first code in the high nibble
    scales = absmax.float().reshape(n, k // blocksize).t().contiguous()  # [G, N]
    if _fits_half(scales):
        # Half the bytes of the absmax stream (1/16 of a block's at 64): it is ~6% of what
        # the M = 1 GEMV reads, and one more fp16 rounding is within the weight's own.
        scales = scales.half()
    return PackedWeight(
        qweight=pack_words(q.t(), 4, block_n),
        scales=scales,
        zeros=None,
        perm=None,
        lut=code.float().contiguous(),
        n=n, k=k, bits=4, group_size=blocksize, block_n=block_n, mode="lut",
        lanes=lane_table(code) if code.numel() == 16 else None,
    )
