"""Linear8bitLt: LLM.int8 (Dettmers et al. 2022) - int8 weights, outliers in 16 bit.

Buffers (stable API and checkpoint layout):
    weight_int8   int8    [N, K]   row-wise codes: W[n, :] ~= weight_int8[n, :] * weight_scale[n]
    weight_scale  float32 [N]      absmax(W[n, :]) / 127
    bias          [N] (the source layer's dtype), or absent
Attributes: in_features, out_features, threshold (6.0; 0 disables the decomposition),
compute_dtype, act_block_size (64; 0 = the paper's one scale per token). None of them is
stored in the tensors: a checkpoint's config.json carries them.

forward(x [..., K]) -> y [..., N] in x.dtype via ``kernels.dispatch("int8", x, self)``:
input columns with some |x| > threshold are multiplied in ``compute_dtype`` with the
matching dequantized weight columns; the rest is quantized to int8 with one scale per token
and block of act_block_size columns (or per token), multiplied int8 x int8 with int32
accumulation per block, then rescaled.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..formats import int8
from .fixed_state import FixedStateDtype

DEFAULT_THRESHOLD = 6.0
#: Activation columns per int8 scale (per token). Finer than the paper's per-token scale: on
#: SmolLM2-135M per-token rounding costs ~1.5% perplexity, blocks of 64 ~0.3% (README).
DEFAULT_ACT_BLOCK_SIZE = 64


class Linear8bitLt(FixedStateDtype):
    STATE_BUFFERS = ("weight_scale",)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        threshold: float = DEFAULT_THRESHOLD,
        compute_dtype: torch.dtype = torch.float32,
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        act_block_size: int = DEFAULT_ACT_BLOCK_SIZE,
    ) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold {threshold} must be >= 0 (0 disables the outlier decomposition)")
        if isinstance(act_block_size, bool) or not isinstance(act_block_size, int) or act_block_size < 0:
            raise ValueError(f"act_block_size {act_block_size!r} must be an int >= 0 (0: one scale per token)")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = float(threshold)
        self.act_block_size = act_block_size
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, threshold: float = DEFAULT_THRESHOLD,
              compute_dtype: torch.dtype = torch.float32, bias_dtype: torch.dtype = torch.float32,
              act_block_size: int = DEFAULT_ACT_BLOCK_SIZE) -> "Linear8bitLt":
        """A skeleton on the meta device, to be filled by ``load_state_dict(assign=True)``."""
        return cls(in_features, out_features, bias, threshold, compute_dtype, bias_dtype, device="meta",
                   act_block_size=act_block_size)

    @classmethod
    def from_linear(cls, linear: nn.Linear, threshold: float = DEFAULT_THRESHOLD,
                    compute_dtype: torch.dtype = torch.float32,
                    act_block_size: int = DEFAULT_ACT_BLOCK_SIZE) -> "Linear8bitLt":
        """Quantize a float Linear row-wise (on its device; the Linear is left untouched)."""
        q, scale = int8.quantize_rowwise(linear.weight.detach())
        return cls.from_quantized(q, scale, linear.bias, threshold, compute_dtype, act_block_size)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                       threshold: float = DEFAULT_THRESHOLD, compute_dtype: torch.dtype = torch.float32,
                       act_block_size: int = DEFAULT_ACT_BLOCK_SIZE) -> "Linear8bitLt":
        """Hold row-wise codes q int8 [N, K] and scale float32 [N]."""
        n, k = q.shape
        layer = cls(k, n, bias is not None, threshold, compute_dtype,
                    bias.dtype if bias is not None else torch.float32, device="meta", act_block_size=act_block_size)
        layer.weight_int8, layer.weight_scale = q, scale.float()
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Weight [N, K] in ``dtype`` (default: the compute dtype)."""
        return int8.dequantize_rowwise(self.weight_int8, self.weight_scale, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.dispatch("int8", x, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"threshold={self.threshold}, act_block_size={self.act_block_size}, compute_dtype={str(self.compute_dtype).replace('torch.', '')}")
