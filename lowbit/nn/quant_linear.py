"""QuantLinear: a Linear layer whose weight is held as packed group-wise integers.

Buffers (the GPTQ tensor layout, with zero points stored as they are, i.e. GPTQ "v2"):
    qweight  int32 [ceil(K*bits/32), N]   codes packed along K, first code in the low bits
    qzeros   int32 [G, ceil(N*bits/32)]    zero points packed along N
    scales   fp16  [G, N]
    g_idx    int32 [K]                     group of each input column (act-order permutes it)
    bias     [N] in the model's dtype, or absent
The same buffers are what lowbit's checkpoints store, so saving is ``state_dict`` and
loading is ``empty`` + ``load_state_dict(assign=True)``.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..formats import AffineQuantized, num_groups, pack, packed_length


class QuantLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool,
        scale_dtype: torch.dtype = torch.float16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        groups = num_groups(in_features, group_size)
        k_words = packed_length(in_features, bits)
        n_words = packed_length(out_features, bits)
        self.register_buffer("qweight", torch.empty(k_words, out_features, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(groups, n_words, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=scale_dtype, device=device))
        self.register_buffer("g_idx", torch.empty(in_features, dtype=torch.int32, device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=scale_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def empty(cls, in_features: int, out_features: int, bits: int, group_size: int, bias: bool,
              scale_dtype: torch.dtype = torch.float16) -> "QuantLinear":
        """A skeleton on the meta device, to be filled by ``load_state_dict(assign=True)``."""
        return cls(in_features, out_features, bits, group_size, bias, scale_dtype, device="meta")

    @classmethod
    def from_quantized(
        cls,
        qw: AffineQuantized,
        group_size: int,
        bias: torch.Tensor | None = None,
        scale_dtype: torch.dtype = torch.float16,
    ) -> "QuantLinear":
        """Pack the result of a quantizer (codes [N, K], scale/zero [N, G], g_idx [K])."""
        n, k = qw.q.shape
        if qw.block_size[0] != 1:
            raise ValueError("QuantLinear holds per-channel or per-group parameters, not per-tensor ones")
        layer = cls(k, n, qw.bits, group_size, bias is not None, scale_dtype, device=qw.q.device)
        layer.qweight = pack(qw.q.t(), qw.bits, dim=0)
        layer.qzeros = pack(qw.zero.t().round().to(torch.int64), qw.bits, dim=1)
        layer.scales = qw.scale.t().to(scale_dtype).contiguous()
        layer.g_idx = qw.g_idx.to(torch.int32).contiguous()
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Weight [N, K] in ``dtype``."""
        return kernels.reference.dequantize_int_group(
            self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.dispatch("int_group", x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")
