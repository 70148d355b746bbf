"""Loading, saving and the architecture registry."""
from .load import load, load_float, parse_dtype, resolve_source
from .registry import ARCHITECTURES, get_arch, get_blocks

__all__ = ["ARCHITECTURES", "get_arch", "get_blocks", "load", "load_float", "parse_dtype", "resolve_source"]
