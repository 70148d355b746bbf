"""Linear4bit: a Linear layer whose weight is held in NF4 or FP4 (QLoRA / bitsandbytes).

Weight W [N, K] (N = out_features, K = in_features, K even) is flattened row-major and cut
into blocks of ``blocksize`` (64) consecutive elements; when K % blocksize == 0 (every
usual model) block b is row b // (K/blocksize), columns (b % (K/blocksize)) * blocksize + [0, blocksize).

Buffers (these names, shapes and dtypes are the stable API and the checkpoint layout):
    weight_4bit    uint8   [N, K/2]    4-bit codes, two a byte: W[n, 2j] in the HIGH nibble,
                                       W[n, 2j+1] in the low nibble (bitsandbytes' order;
                                       the bytes equal bnb's flat ``quantize_4bit`` output)
    absmax         float32 [nb]        nb = ceil(N*K/blocksize), without double quantization
                   uint8   [nb]        with double quantization: indices into
                                       ``formats.nf4.dynamic_code()`` (float32 [256])
    nested_absmax  float32 [ceil(nb/256)]  double quantization only
    nested_offset  float32 []              double quantization only (mean of the absmax)
    bias           [N] (the source layer's dtype), or absent
Attributes: in_features, out_features, quant_type ("nf4" | "fp4"), blocksize,
double_quant, compute_dtype. The 16-value code book is not a buffer (a constant):
``layer.code`` = ``formats.nf4.code_book(quant_type, device)`` float32 [16].

Dequantized weight: absmax_f = layer.absmax_float()  (float32 [nb]; with double quant
dynamic_code[absmax] * nested_absmax[b // 256] + nested_offset), then
W[n, k] = code[nibble(n, k)] * absmax_f[(n*K + k) // blocksize].

forward(x [..., K]) computes in ``compute_dtype`` and returns y [..., N] in x.dtype,
through ``kernels.dispatch("nf4", x, self)`` (for FP4 too: the op is the layout).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..formats import nf4
from .fixed_state import FixedStateDtype


class Linear4bit(FixedStateDtype):
    STATE_BUFFERS = ("absmax", "nested_absmax", "nested_offset")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        quant_type: str = "nf4",
        blocksize: int = nf4.DEFAULT_BLOCKSIZE,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if quant_type not in nf4.QUANT_TYPES:
            raise ValueError(f"unknown 4-bit quant type {quant_type!r}: choose one of {', '.join(nf4.QUANT_TYPES)}")
        if in_features % 2:
            raise ValueError(f"Linear4bit needs an even in_features (two codes a byte), got {in_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.quant_type = quant_type
        self.blocksize = blocksize
        self.double_quant = double_quant
        self.compute_dtype = compute_dtype
        nb = nf4.num_blocks(in_features * out_features, blocksize)
        self.register_buffer("weight_4bit", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax", torch.empty(nb, dtype=torch.uint8, device=device))
            self.register_buffer("nested_absmax", torch.empty(nf4.num_blocks(nb, nf4.NESTED_BLOCKSIZE),
                                                              dtype=torch.float32, device=device))
            self.register_buffer("nested_offset", torch.empty((), dtype=torch.float32, device=device))
        else:
            self.register_buffer("absmax", torch.empty(nb, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, quant_type: str = "nf4",
              blocksize: int = nf4.DEFAULT_BLOCKSIZE, double_quant: bool = True,
              compute_dtype: torch.dtype = torch.float32, bias_dtype: torch.dtype = torch.float32) -> "Linear4bit":
        """A skeleton on the meta device, to be filled by ``load_state_dict(assign=True)``."""
        return cls(in_features, out_features, bias, quant_type, blocksize, double_quant, compute_dtype,
                   bias_dtype, device="meta")

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        quant_type: str = "nf4",
        blocksize: int = nf4.DEFAULT_BLOCKSIZE,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.float32,
    ) -> "Linear4bit":
        """Quantize a float Linear (on its device; the Linear is left untouched)."""
        q = nf4.quantize_4bit(linear.weight.detach(), quant_type, blocksize, double_quant)
        return cls.from_quantized(q, linear.bias, compute_dtype)

    @classmethod
    def from_quantized(cls, q: nf4.Quantized4bit, bias: torch.Tensor | None = None,
                       compute_dtype: torch.dtype = torch.float32) -> "Linear4bit":
        """Hold a quantized weight of shape [N, K] (``formats.nf4.quantize_4bit`` output)."""
        n, k = q.shape
        layer = cls(k, n, bias is not None, q.quant_type, q.blocksize, q.nested is not None, compute_dtype,
                    bias.dtype if bias is not None else torch.float32, device="meta")
        layer.weight_4bit = q.packed.view(n, k // 2)
        if q.nested is not None:
            layer.absmax = q.nested.q
            layer.nested_absmax = q.nested.absmax
            layer.nested_offset = q.nested.offset.reshape(())
        else:
            layer.absmax = q.absmax
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    @property
    def code(self) -> torch.Tensor:
        """float32 [16]: the code book (value of each 4-bit code) on this layer's device."""
        return nf4.code_book(self.quant_type, self.weight_4bit.device)

    def absmax_float(self) -> torch.Tensor:
        """float32 [nb]: the scale of each block (double quantization undone)."""
        if self.double_quant:
            return nf4.dequantize_absmax(self.absmax, self.nested_absmax, self.nested_offset)
        return self.absmax

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Weight [N, K] in ``dtype`` (default: the compute dtype)."""
        return nf4.dequantize_4bit(self.weight_4bit, self.absmax_float(), self.quant_type, self.blocksize,
                                   (self.out_features, self.in_features), dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.dispatch("nf4", x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={self.quant_type}, blocksize={self.blocksize}, double_quant={self.double_quant}, "
                f"compute_dtype={str(self.compute_dtype).replace('torch.', '')}")
