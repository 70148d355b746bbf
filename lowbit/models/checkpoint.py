"""lowbit's own checkpoint: safetensors shards of the module buffers, config.json with a
``quantization_config``, tokenizer files and ``lowbit_report.json``.

Saving writes ``state_dict`` as it is (QuantLinear buffers already are the stored layout);
loading builds the model skeleton without memory, swaps in empty quantized modules where
the file holds quantized tensors, and assigns the tensors: the same modules the quantize
path ends with.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import LowbitError
from ..nn import QuantLinear

log = logging.getLogger(__name__)

REPORT_FILE = "lowbit_report.json"
MAX_SHARD_SIZE = "2GB"

#: Quantized module types by the tensor that marks them in a checkpoint. Each entry builds
#: an empty (meta) module for a Linear from the checkpoint's tensors and config.
ModuleFactory = Callable[[nn.Linear, str, dict, QuantConfig], nn.Module]


def _empty_quant_linear(linear: nn.Linear, name: str, tensors: dict, cfg: QuantConfig) -> nn.Module:
    return QuantLinear.empty(
        linear.in_features, linear.out_features, cfg.bits, cfg.group_size, linear.bias is not None,
        scale_dtype=getattr(tensors.get(f"{name}.scales"), "dtype", torch.float16),
    )


def _empty_linear4bit(linear: nn.Linear, name: str, tensors: dict, cfg: QuantConfig) -> nn.Module:
    from ..nn import Linear4bit

    bias = tensors.get(f"{name}.bias")
    return Linear4bit.empty(
        linear.in_features, linear.out_features, bias is not None, cfg.method, cfg.blocksize,
        double_quant=f"{name}.nested_absmax" in tensors, compute_dtype=getattr(torch, cfg.compute_dtype),
        bias_dtype=getattr(bias, "dtype", torch.float32),
    )


def _empty_linear8bit(linear: nn.Linear, name: str, tensors: dict, cfg: QuantConfig) -> nn.Module:
    from ..nn import Linear8bitLt

    bias = tensors.get(f"{name}.bias")
    return Linear8bitLt.empty(
        linear.in_features, linear.out_features, bias is not None, cfg.int8_threshold,
        compute_dtype=getattr(torch, cfg.compute_dtype), bias_dtype=getattr(bias, "dtype", torch.float32),
        act_block_size=cfg.int8_act_block_size,
    )


QUANTIZED_MODULES: dict[str, ModuleFactory] = {
    "qweight": _empty_quant_linear, "weight_4bit": _empty_linear4bit, "weight_int8": _empty_linear8bit,
}


def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without tied duplicates (safetensors refuses shared storage)."""
    seen: set[tuple] = set()
    out = {}
    for name, t in model.state_dict().items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.device.type != "meta" and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def save_tensors(model: nn.Module, out: Path) -> int:
    """Write the model's tensors as safetensors shards (+ index); returns bytes written."""
    save_state_dict({k: v.cpu() for k, v in _unique_state_dict(model).items()}, out)
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))


def save_state_dict(state: dict[str, torch.Tensor], out: Path) -> None:
    """Write CPU tensors as safetensors shards of at most MAX_SHARD_SIZE (+ index when sharded)."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=MAX_SHARD_SIZE)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n] for n in names}, str(out / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_checkpoint(model: nn.Module, tokenizer, cfg: QuantConfig, out: Path, report: dict | None = None) -> None:
    """Write a complete checkpoint into the (temporary) folder ``out``."""
    model.config.quantization_config = cfg.to_dict()
    try:
        model.config.save_pretrained(out)
    finally:
        del model.config.quantization_config
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    save_tensors(model, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if report is not None:
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2))


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors files; corrupt files raise LowbitError."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LowbitError(f"{folder} has no .safetensors files: the checkpoint is incomplete")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error types for bad headers and sizes
            raise LowbitError(
                f"{f} is corrupt or truncated ({str(e).splitlines()[0]}): re-create or re-download the checkpoint"
            ) from None
    return tensors


def load_checkpoint(folder: Path, config_dict: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """The model stored in a lowbit checkpoint folder, on CPU."""
    cfg = QuantConfig.from_dict(config_dict.get("quantization_config"))
    model = empty_model(folder, dtype or torch.float32)
    tensors = read_tensors(folder)
    swap_quantized_modules(model, tensors, cfg)
    assign_tensors(model, tensors, folder)
    cast_float_parameters(model, dtype or torch.float32)  # a checkpoint may store them in 16-bit
    model.quant_config = cfg
    return model.eval()


def empty_model(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The causal LM of the folder's config.json with its weights on the meta device (none
    allocated), built without the config's quantization_config: the checkpoint's quantized
    layers are ours to read, not transformers'."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(str(folder))
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(hf_config, dtype=dtype)


def assign_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Put a checkpoint's tensors in place of the model's meta weights (tied weights tied
    again); a tensor of the wrong shape, one the model lacks, or a weight no tensor fills
    raises LowbitError naming it."""
    try:
        result = model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as e:
        raise LowbitError(f"checkpoint {folder} does not match its config: {str(e).strip().splitlines()[-1]}") from None
    if result.unexpected_keys:
        raise LowbitError(f"checkpoint {folder} holds tensor '{result.unexpected_keys[0]}' that its model does not have")
    model.tie_weights()
    still_meta = [n for n, t in model.state_dict().items() if t.device.type == "meta"]
    if still_meta:
        raise LowbitError(f"checkpoint {folder} is missing tensor '{still_meta[0]}'")


def swap_quantized_modules(model: nn.Module, tensors: dict, cfg: QuantConfig) -> None:
    """Replace each Linear whose tensors in ``tensors`` mark it quantized by an empty module."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        for marker, factory in QUANTIZED_MODULES.items():
            if f"{name}.{marker}" in tensors:
                set_module(model, name, factory(module, name, tensors, cfg))
                break


def cast_float_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the float parameters (the unquantized parts) to ``dtype``. Quantized modules hold
    buffers, not parameters, so their packed codes and fp16 scales are left as they are."""
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    model.config.dtype = dtype


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def read_config(folder: Path) -> dict:
    """config.json of a model folder as a dict; a missing or unreadable one raises LowbitError."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LowbitError(
            f"{folder} is not a model folder (no config.json): pass a Hugging Face model folder, "
            "a .gguf file, a hub id or 'demo'"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LowbitError(f"{path} is not valid JSON ({e}): the model folder is corrupt") from None


def is_lowbit_checkpoint(config_dict: dict) -> bool:
    qc = config_dict.get("quantization_config")
    return isinstance(qc, dict) and qc.get("quant_method") == "lowbit"


__all__ = [
    "QUANTIZED_MODULES", "REPORT_FILE", "disk_bytes", "is_lowbit_checkpoint", "load_checkpoint",
    "assign_tensors", "empty_model", "read_config", "read_tensors", "save_checkpoint", "save_tensors", "set_module", "swap_quantized_modules",
]
