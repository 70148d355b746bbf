"""nn.Module replacements that hold quantized weights and call kernels."""
from .quant_linear import QuantLinear

__all__ = ["QuantLinear"]
