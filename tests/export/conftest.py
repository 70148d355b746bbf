"""Fixtures for the interchange tests: tiny models quantized in memory, written in a format."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import exporthelp  # noqa: E402


@pytest.fixture(scope="session")
def quantized():
    """Factory: quantized(bits, group_size, sym, lm_head) -> (model, tok, cfg), cached: clone before mutating."""
    cache = {}

    def get(bits=4, group_size=32, sym=True, lm_head=False):
        key = (bits, group_size, sym, lm_head)
        if key not in cache:
            cache[key] = exporthelp.quantize_tiny(bits, group_size, sym, lm_head)
        return cache[key]

    return get


@pytest.fixture
def write(tmp_path):
    """write(model, tok, cfg, fmt, name=None, **options) -> folder of the written checkpoint."""
    from lowbit import export

    def run(model, tok, cfg, fmt, name=None, **options):
        out = tmp_path / (name or fmt)
        out.mkdir()
        export.WRITERS[fmt](model, tok, cfg, out, **options)
        return out

    return run
