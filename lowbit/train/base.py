"""The frozen base model of a fine-tuning run: float, or with its decoder-block Linear
layers quantized to NF4/FP4 on load (QLoRA's ``load_in_4bit``)."""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LowbitError
from ..models.registry import get_blocks
from .lora import set_submodule

log = logging.getLogger(__name__)


def quantize_base_4bit(model: nn.Module, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = True,
                       compute_dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                       progress: bool = False) -> int:
    """Replace every nn.Linear of the decoder blocks by a Linear4bit (in place), quantizing
    on ``device`` (default: where the layer is); embeddings, norms and lm_head stay float.
    Returns the number of layers quantized."""
    from ..nn import Linear4bit

    blocks = get_blocks(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    names = [f"{prefix}.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.Linear)]
    for name in tqdm(names, desc="quantizing base to 4 bits", unit="layer", disable=not progress):
        linear = model.get_submodule(name)
        if device is not None:
            linear = linear.to(device)
        set_submodule(model, name, Linear4bit.from_linear(linear, quant_type=quant_type, blocksize=blocksize,
                                                          double_quant=double_quant, compute_dtype=compute_dtype))
        del linear  # the float weight is freed layer by layer: peak memory stays one layer above 4 bits
    return len(names)


def load_base(model_path: str, load_in_4bit: bool = True, quant_type: str = "nf4", double_quant: bool = True,
              compute_dtype: torch.dtype = torch.float32, device: str = "cpu", progress: bool = False):
    """(model, tokenizer) ready for LoRA: float parts in ``compute_dtype`` on ``device``,
    block Linears in 4 bits when ``load_in_4bit``, every parameter frozen, no KV cache."""
    from ..models.load import load_float

    model, tokenizer = load_float(model_path, dtype=compute_dtype)
    if tokenizer is None:
        raise LowbitError(f"{model_path} has no tokenizer files: training needs the model's tokenizer")
    if load_in_4bit:
        n = quantize_base_4bit(model, quant_type, double_quant=double_quant, compute_dtype=compute_dtype,
                               device=device, progress=progress)
        log.info("base model: %d Linear layers in %s (double quant %s), compute dtype %s", n, quant_type,
                 "on" if double_quant else "off", str(compute_dtype).replace("torch.", ""))
        if torch.device(device).type == "cpu":
            # The float parameters left (embeddings, norms) may be views of the memory-mapped
            # safetensors file, which then stays resident whole, quantized layers included
            # (~300 MB of the demo model): copy them off it.
            for p in model.parameters():
                p.data = p.data.clone()
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    return model, tokenizer


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's config allows, or None when it names none."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def fingerprint(model: nn.Module) -> dict:
    """What identifies a base model for resuming: its shape and a hash of its input embeddings
    (unquantized in every mode, so a 4-bit and a float run of one model agree)."""
    cfg = model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size")
    fp = {k: getattr(cfg, k, None) for k in keys}
    emb = model.get_input_embeddings().weight.detach()
    rows = emb[: min(64, emb.shape[0])].float().cpu().contiguous()
    fp["embedding_sha256"] = hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]
    return fp
