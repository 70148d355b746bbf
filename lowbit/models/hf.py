"""Float models through transformers: a local folder, a hub id, or a GGUF file."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..errors import LowbitError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(src: str) -> bool:
    return bool(_HUB_ID.match(src)) and not Path(src).exists()


def load_tokenizer(src: str | Path, **kwargs):
    """The tokenizer of a model folder or hub id, or None (with a warning) if it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(src), **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        log.warning("no tokenizer loaded from %s (%s)", src, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None


def _strip_gguf_quantizer(model) -> None:
    # transformers keeps a GGUF quantizer on the model and then refuses save_pretrained;
    # the weights are already dequantized to float, so both markers are stale.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a .gguf file, dequantized to ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise LowbitError(f"loading GGUF needs the `gguf` package: pip install gguf ({e})") from None
    except (ValueError, OSError, KeyError) as e:
        raise LowbitError(f"cannot load GGUF file {path}: {str(e).splitlines()[0]}") from None
    _strip_gguf_quantizer(model)
    return model, tokenizer


def load_pretrained(src: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a Hugging Face folder or hub id, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    src = str(src)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    except OSError as e:
        if looks_like_hub_id(src):
            raise LowbitError(
                f"could not load '{src}' from the Hugging Face Hub ({str(e).splitlines()[0]}): check the id "
                "and your network, or pass a local model folder"
            ) from None
        raise LowbitError(f"cannot load model from {src}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        raise LowbitError(f"cannot load model from {src}: {str(e).splitlines()[0]}") from None
    return model, load_tokenizer(src)
