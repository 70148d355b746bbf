"""How quantized weights are represented and packed. Imports nothing else of lowbit."""
from .int_group import (
    SUPPORTED_BITS,
    AffineQuantized,
    choose_qparams,
    choose_qparams_clipped,
    dequantize,
    group_block,
    group_index,
    num_groups,
    quantize,
    quantize_affine,
)
from .packing import pack, packed_length, unpack

__all__ = [
    "SUPPORTED_BITS",
    "AffineQuantized",
    "choose_qparams",
    "choose_qparams_clipped",
    "dequantize",
    "group_block",
    "group_index",
    "num_groups",
    "pack",
    "packed_length",
    "quantize",
    "quantize_affine",
    "unpack",
]
