"""nn.Module replacements that hold quantized weights and call kernels."""
from .linear4bit import Linear4bit
from .linear8bit import Linear8bitLt
from .quant_linear import QuantLinear

__all__ = ["Linear4bit", "Linear8bitLt", "QuantLinear"]
