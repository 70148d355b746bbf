"""Packed half-precision pairs (f16x2, two fp16 in one int32 register) for the int4 GEMV.

One f16x2 instruction does the work of two fp32 ones, and the 4-bit codes of a word decode
straight into f16x2: OR the codes at bits [0, 4) and [16, 20) into the exponent of 1024.0
(0x6400) and each half reads 1024 + q, exactly. So two weights cost one LOP3, one FMA that
subtracts the zero point and one FMA with the activations (``dot_codes``).

The values carried are (q - zero) / 16, not q - zero: exact all the same (multiples of 1/16
below 1), and the fp16 partial sums of (q - zero) * x stay sixteen times further from
overflow (activations of a few thousand occur in LLMs; |q - zero| reaches 15).

Code-book weights (NF4/FP4: w = lut[q] * absmax) decode by a warp shuffle instead
(``dot4_lut``): every lane loads lut[lane % 16] as f16x2 from a 32-entry lane table
(``layout.lane_table``), and ``shfl.sync.idx`` with the word shifted so that the code sits
in its low bits reads the value from the lane the code names (the hardware uses the low 5
bits of the index, and lanes l and l + 16 hold the same entry, so the next code's bit 4
does no harm). Two weights: two shifts, two shuffles, one PRMT and one f16x2 FMA. The
table register lives only inside the asm that shuffles it: a value tied to the hardware
lane must never be a Triton tensor, which the compiler may move between threads when it
changes layouts.

Under TRITON_INTERPRET (CPU tests) PTX cannot run: ``INTERPRET`` selects the same
arithmetic written with integer and fp32 ops (rounded to fp16 where the PTX rounds).
"""
from __future__ import annotations

import triton
import triton.language as tl

#: fp16 1/16 and 1/256 as f16x2 immediates (the two code positions of a half-word).
_ASM_DOT = (
    "{ .reg .b32 h, v, c; lop3.b32 h, $1, MASK, 0x64006400, 0xea; mov.b32 c, MUL; "
    "fma.rn.f16x2 v, h, c, $3; fma.rn.f16x2 $0, v, $2, $4; }"
)
ASM_DOT_LOW = tl.constexpr(_ASM_DOT.replace("MASK", "0x000f000f").replace("MUL", "0x2c002c00"))
ASM_DOT_HIGH = tl.constexpr(_ASM_DOT.replace("MASK", "0x00f000f0").replace("MUL", "0x1c001c00"))
#: Shared with the Gluon kernel (``mma16``): the f16x2 building blocks as PTX.
ASM_PACK = tl.constexpr("mov.b32 $0, {$1, $2};")
ASM_HIGH_TERM = tl.constexpr("{ .reg .b32 c; mov.b32 c, 0x53805380; add.rn.f16x2 $0, $1, c; }")
#: One word's code pair through the lane table t into $O (shifts, shuffles, PRMT).
_DEC_STEP = "shr.b32 a, $W, SLO; shr.b32 b, $W, SHI; shfl.sync.idx.b32 lo, t, a, 0x1f, -1; " \
    "shfl.sync.idx.b32 hi, t, b, 0x1f, -1; prmt.b32 $O, lo, hi, 0x7610; "
_LUT_STEP = _DEC_STEP.replace("$O", "p") + "fma.rn.f16x2 r, p, $X, r; "
_ASM_LUT4 = (
    "{ .reg .b32 t, a, b, lo, hi, p, r, l; .reg .b64 o; mov.u32 l, %laneid; mul.wide.u32 o, l, 4; "
    "add.s64 o, o, $10; ld.global.nc.b32 t, [o]; mov.b32 r, $9; "
    + "".join(_LUT_STEP.replace("$W", f"${i + 1}").replace("$X", f"${i + 5}") for i in range(4))
    + "mov.b32 $0, r; }"
)
_ASM_DEC4 = (
    "{ .reg .b32 t, a, b, lo, hi, l; .reg .b64 o; mov.u32 l, %laneid; mul.wide.u32 o, l, 4; "
    "add.s64 o, o, $8; ld.global.nc.b32 t, [o]; "
    + "".join(_DEC_STEP.replace("$W", f"${i + 4}").replace("$O", f"${i}") for i in range(4)) + "}"
)
#: The same shuffles without the FMA: code pair (jp, jp + 4) of four words -> four f16x2 values.
ASM_DEC4_0 = tl.constexpr(_ASM_DEC4.replace("SLO", "0").replace("SHI", "16"))
ASM_DEC4_1 = tl.constexpr(_ASM_DEC4.replace("SLO", "4").replace("SHI", "20"))
ASM_DEC4_2 = tl.constexpr(_ASM_DEC4.replace("SLO", "8").replace("SHI", "24"))
ASM_DEC4_3 = tl.constexpr(_ASM_DEC4.replace("SLO", "12").replace("SHI", "28"))
_DEC_INT = "lop3.b32 h, $W, MASK, 0x64006400, 0xea; fma.rn.f16x2 $O, h, c, $8; "
_ASM_DEC_INT4 = "{ .reg .b32 h, c; mov.b32 c, MUL; " + "".join(
    _DEC_INT.replace("$W", f"${i + 4}").replace("$O", f"${i}") for i in range(4)) + "}"
#: The int4 decode of ``dot_codes`` without the FMA: four words -> four f16x2 (q - zero) / 16.
ASM_DEC_INT4_LOW = tl.constexpr(_ASM_DEC_INT4.replace("MASK", "0x000f000f").replace("MUL", "0x2c002c00"))
ASM_DEC_INT4_HIGH = tl.constexpr(_ASM_DEC_INT4.replace("MASK", "0x00f000f0").replace("MUL", "0x1c001c00"))
#: A load whose address depends on 16 f16x2 values (it reads lane-table entry 0 or 1; the
#: result is not used): the values must then exist before any later memory operation.
ASM_PIN16 = tl.constexpr(
    "{ .reg .b32 a, b; .reg .b64 o; xor.b32 a, $1, $2; xor.b32 b, $3, $4; xor.b32 a, a, $5; xor.b32 b, b, $6; "
    "xor.b32 a, a, $7; xor.b32 b, b, $8; xor.b32 a, a, $9; xor.b32 b, b, $10; xor.b32 a, a, $11; "
    "xor.b32 b, b, $12; xor.b32 a, a, $13; xor.b32 b, b, $14; xor.b32 a, a, $15; xor.b32 b, b, $16; "
    "xor.b32 a, a, b; and.b32 a, a, 4; cvt.u64.u32 o, a; add.s64 o, o, $17; ld.volatile.global.b32 $0, [o]; }")
ASM_FMA4 = tl.constexpr(
    "{ .reg .b32 r; fma.rn.f16x2 r, $1, $5, $9; fma.rn.f16x2 r, $2, $6, r; fma.rn.f16x2 r, $3, $7, r; "
    "fma.rn.f16x2 $0, $4, $8, r; }")
#: Code pair (jp, jp + 4) of four words: codes at bits 4 jp and 16 + 4 jp.
ASM_LUT4_0 = tl.constexpr(_ASM_LUT4.replace("SLO", "0").replace("SHI", "16"))
ASM_LUT4_1 = tl.constexpr(_ASM_LUT4.replace("SLO", "4").replace("SHI", "20"))
ASM_LUT4_2 = tl.constexpr(_ASM_LUT4.replace("SLO", "8").replace("SHI", "24"))
ASM_LUT4_3 = tl.constexpr(_ASM_LUT4.replace("SLO", "12").replace("SHI", "28"))
ASM_PAIR_QUADS = tl.constexpr(
    "{ .reg .b32 a0, a1, b0, b1; mov.b64 {a0, a1}, $4; mov.b64 {b0, b1}, $5; "
    "prmt.b32 $0, a0, b0, 0x5410; prmt.b32 $1, a0, b0, 0x7632; "
    "prmt.b32 $2, a1, b1, 0x5410; prmt.b32 $3, a1, b1, 0x7632; }")
ASM_PAIR_QUADS_BF16 = tl.constexpr(
    "{ .reg .b32 a0, a1, b0, b1, fa, fb; mov.b64 {a0, a1}, $4; mov.b64 {b0, b1}, $5; "
    "shl.b32 fa, a0, 16; shl.b32 fb, b0, 16; cvt.rn.f16x2.f32 $0, fb, fa; "
    "and.b32 fa, a0, 0xffff0000; and.b32 fb, b0, 0xffff0000; cvt.rn.f16x2.f32 $1, fb, fa; "
    "shl.b32 fa, a1, 16; shl.b32 fb, b1, 16; cvt.rn.f16x2.f32 $2, fb, fa; "
    "and.b32 fa, a1, 0xffff0000; and.b32 fb, b1, 0xffff0000; cvt.rn.f16x2.f32 $3, fb, fa; }")


@triton.jit
def unpack(v, INTERPRET: tl.constexpr):
    """f16x2 (int32) -> (low half, high half) as float32."""
    if INTERPRET:
        lo = (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = ((v >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return lo, hi
    else:
        return tl.inline_asm_elementwise(
            "{ .reg .f16 a, b; mov.b32 {a, b}, $2; cvt.f32.f16 $0, a; cvt.f32.f16 $1, b; }",
            "=r,=r,r", [v], dtype=(tl.float32, tl.float32), is_pure=True, pack=1)


@triton.jit
def pack(lo, hi, INTERPRET: tl.constexpr):
    """Two fp16 tensors -> f16x2 (int32), ``lo`` in the low half."""
    if INTERPRET:
        a = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
        b = hi.to(tl.int16, bitcast=True).to(tl.int32) << 16
        return a | b
    else:
        return tl.inline_asm_elementwise(ASM_PACK, "=r,h,h", [lo, hi], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def high_term(zt, INTERPRET: tl.constexpr):
    """Zero term of the low code position -(64 + z/16) -> of the high one -(4 + z/16) (exact)."""
    if INTERPRET:
        lo, hi = unpack(zt, INTERPRET)
        return pack((lo + 60.0).to(tl.float16), (hi + 60.0).to(tl.float16), INTERPRET)
    else:
        return tl.inline_asm_elementwise(ASM_HIGH_TERM, "=r,r", [zt], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def pair_quads(a, b, INTERPRET: tl.constexpr):
    """Two int64 tensors, four fp16 each -> four f16x2: (a's half i, b's half i), i = 0..3."""
    if INTERPRET:
        p0 = (a & 0xFFFF) | ((b & 0xFFFF) << 16)
        p1 = ((a >> 16) & 0xFFFF) | (((b >> 16) & 0xFFFF) << 16)
        p2 = ((a >> 32) & 0xFFFF) | (((b >> 32) & 0xFFFF) << 16)
        p3 = ((a >> 48) & 0xFFFF) | (((b >> 48) & 0xFFFF) << 16)
        return p0.to(tl.int32), p1.to(tl.int32), p2.to(tl.int32), p3.to(tl.int32)
    else:
        return tl.inline_asm_elementwise(
            ASM_PAIR_QUADS, "=r,=r,=r,=r,l,l", [a, b], dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True,
            pack=1)


@triton.jit
def pair_quads_bf16(a, b, INTERPRET: tl.constexpr):
    """As ``pair_quads`` for bf16 activations: each pair rounded to f16x2 (bf16 -> f32 is a
    shift; one cvt packs two f32 into f16x2). Values beyond the fp16 range become inf."""
    if INTERPRET:
        p0 = pack(_bf16(a, 0), _bf16(b, 0), INTERPRET)
        p1 = pack(_bf16(a, 16), _bf16(b, 16), INTERPRET)
        p2 = pack(_bf16(a, 32), _bf16(b, 32), INTERPRET)
        p3 = pack(_bf16(a, 48), _bf16(b, 48), INTERPRET)
        return p0, p1, p2, p3
    else:
        return tl.inline_asm_elementwise(
            ASM_PAIR_QUADS_BF16, "=r,=r,=r,=r,l,l", [a, b], dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
            is_pure=True, pack=1)


@triton.jit
def _bf16(v, SHIFT: tl.constexpr):
    """The bf16 at bits [SHIFT, SHIFT + 16) of int64 v, as fp16 (interpreter path)."""
    bits = ((v >> SHIFT) & 0xFFFF).to(tl.int32) << 16
    return bits.to(tl.float32, bitcast=True).to(tl.float16)


@triton.jit
def dot_codes(src, x2, zt, acc, HIGH: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + (q - zero) / 16 * x, lane by lane, all f16x2 in int32 tensors (broadcast).

    src: words whose codes sit at bits [0, 4) and [16, 20) (HIGH=False) or [4, 8) and
    [20, 24) (HIGH=True); zt: -(64 + zero / 16) for the low position, -(4 + zero / 16) for
    the high one ((1024 + q) / 16 and (1024 + 16 q) / 256 are both exact in fp16).
    """
    if INTERPRET:  # (q - zero) / 16 is exact in fp16, so decoding first rounds nothing
        return _fma2(acc, _int_value(src, zt, HIGH), x2, INTERPRET)
    else:
        if HIGH:
            return tl.inline_asm_elementwise(ASM_DOT_HIGH, "=r,r,r,r,r", [src, x2, zt, acc], dtype=tl.int32,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(ASM_DOT_LOW, "=r,r,r,r,r", [src, x2, zt, acc], dtype=tl.int32,
                                             is_pure=True, pack=1)


@triton.jit
def dot4_lut(acc, w0, w1, w2, w3, x2, lanes_ptr, JP: tl.constexpr, INTERPRET: tl.constexpr):
    """acc + sum over i of (lut[code JP of w_i], lut[code JP + 4 of w_i]) * x2[i], all f16x2
    in int32 tensors (codes at bits 4 JP and 16 + 4 JP). lanes_ptr: int32 [32], f16x2
    (lut[l % 16], lut[l % 16]) for lane l (the interpreter reads entry q for code q)."""
    p0, p1, p2, p3 = x2
    if INTERPRET:
        return dot4_values(acc, decode_lut4(w0, w1, w2, w3, lanes_ptr, JP, INTERPRET), x2, INTERPRET)
    else:
        args = [w0, w1, w2, w3, p0, p1, p2, p3, acc, lanes_ptr.to(tl.int64)]
        cons: tl.constexpr = "=r,r,r,r,r,r,r,r,r,r,l"
        if JP == 0:
            return tl.inline_asm_elementwise(ASM_LUT4_0, cons, args, dtype=tl.int32, is_pure=True, pack=1)
        elif JP == 1:
            return tl.inline_asm_elementwise(ASM_LUT4_1, cons, args, dtype=tl.int32, is_pure=True, pack=1)
        elif JP == 2:
            return tl.inline_asm_elementwise(ASM_LUT4_2, cons, args, dtype=tl.int32, is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(ASM_LUT4_3, cons, args, dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def decode_lut4(w0, w1, w2, w3, lanes_ptr, JP: tl.constexpr, INTERPRET: tl.constexpr):
    """Code pair (JP, JP + 4) of four words through the code book: four f16x2 (lut[code JP],
    lut[code JP + 4]), the values ``dot4_lut`` multiplies (by the same warp shuffles)."""
    if INTERPRET:
        return (_lut_value(w0, lanes_ptr, JP), _lut_value(w1, lanes_ptr, JP), _lut_value(w2, lanes_ptr, JP),
                _lut_value(w3, lanes_ptr, JP))
    else:
        args = [w0, w1, w2, w3, lanes_ptr.to(tl.int64)]
        cons: tl.constexpr = "=r,=r,=r,=r,r,r,r,r,l"
        if JP == 0:
            return tl.inline_asm_elementwise(ASM_DEC4_0, cons, args, dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
                                             is_pure=True, pack=1)
        elif JP == 1:
            return tl.inline_asm_elementwise(ASM_DEC4_1, cons, args, dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
                                             is_pure=True, pack=1)
        elif JP == 2:
            return tl.inline_asm_elementwise(ASM_DEC4_2, cons, args, dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(ASM_DEC4_3, cons, args, dtype=(tl.int32, tl.int32, tl.int32, tl.int32),
                                             is_pure=True, pack=1)


@triton.jit
def _lut_value(w, lanes_ptr, JP: tl.constexpr):
    """Interpreter path of ``decode_lut4`` for one word (lane table entry q is lut[q])."""
    lo = tl.load(lanes_ptr + ((w >> (4 * JP)) & 15)) & 0xFFFF
    hi = tl.load(lanes_ptr + ((w >> (16 + 4 * JP)) & 15)) & 0xFFFF
    return lo | (hi << 16)


@triton.jit
def dot4_values(acc, vals, x2, INTERPRET: tl.constexpr):
    """acc + sum over i of vals[i] * x2[i] (f16x2, in order i = 0..3, as ``dot4_lut``)."""
    v0, v1, v2, v3 = vals
    p0, p1, p2, p3 = x2
    if INTERPRET:
        acc = _fma2(acc, v0, p0, INTERPRET)
        acc = _fma2(acc, v1, p1, INTERPRET)
        acc = _fma2(acc, v2, p2, INTERPRET)
        return _fma2(acc, v3, p3, INTERPRET)
    else:
        return tl.inline_asm_elementwise(ASM_FMA4, "=r,r,r,r,r,r,r,r,r,r", [v0, v1, v2, v3, p0, p1, p2, p3, acc],
                                         dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _fma2(acc, v, x2, INTERPRET: tl.constexpr):
    v_lo, v_hi = unpack(v, INTERPRET)
    x_lo, x_hi = unpack(x2, INTERPRET)
    a_lo, a_hi = unpack(acc, INTERPRET)
    return pack((a_lo + v_lo * x_lo).to(tl.float16), (a_hi + v_hi * x_hi).to(tl.float16), INTERPRET)


@triton.jit
def pin_before_wait(d0, d1, d2, d3, ptr, INTERPRET: tl.constexpr):
    """Keep the decoded values of a step (four tuples of four f16x2 tensors) ahead of the PDL
    wait: ptxas moves the wait above any arithmetic it does not depend on (side-effecting asm,
    or the wait in the same asm block, included), but not above a load (here one of ``ptr``'s
    first two int32, read-only weights, at an address that depends on all of them)."""
    if not INTERPRET:
        tl.inline_asm_elementwise(ASM_PIN16, "=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,l",
                                  [d0[0], d0[1], d0[2], d0[3], d1[0], d1[1], d1[2], d1[3], d2[0], d2[1], d2[2],
                                   d2[3], d3[0], d3[1], d3[2], d3[3], ptr.to(tl.int64)],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def decode_int4(w0, w1, w2, w3, zt, HIGH: tl.constexpr, INTERPRET: tl.constexpr):
    """Four words' codes at bits [0, 4) and [16, 20) (HIGH: [4, 8) and [20, 24)) -> four
    f16x2 (q - zero) / 16, the values ``dot_codes`` multiplies (zt as there)."""
    if INTERPRET:
        return (_int_value(w0, zt, HIGH), _int_value(w1, zt, HIGH), _int_value(w2, zt, HIGH),
                _int_value(w3, zt, HIGH))
    else:
        args = [w0, w1, w2, w3, zt]
        if HIGH:
            return tl.inline_asm_elementwise(ASM_DEC_INT4_HIGH, "=r,=r,=r,=r,r,r,r,r,r", args,
                                             dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise(ASM_DEC_INT4_LOW, "=r,=r,=r,=r,r,r,r,r,r", args,
                                             dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _int_value(w, zt, HIGH: tl.constexpr):
    """Interpreter path of ``decode_int4`` for one word."""
    mask: tl.constexpr = 0x00F000F0 if HIGH else 0x000F000F
    mul: tl.constexpr = 1.0 / 256 if HIGH else 1.0 / 16
    h_lo, h_hi = unpack((w & mask) | 0x64006400, True)
    z_lo, z_hi = unpack(zt, True)
    return pack((h_lo * mul + z_lo).to(tl.float16), (h_hi * mul + z_hi).to(tl.float16), True)
