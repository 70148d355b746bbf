"""LoRA adapters in the peft format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor keys are peft's: ``base_model.model.<module path>.lora_A.weight`` ([r, in]) and
``...lora_B.weight`` ([out, r]), the module path being the layer's name in the plain
transformers model (``model.layers.0.self_attn.q_proj``), so ``PeftModel.from_pretrained``
puts them on the 16-bit base and ``lowbit merge`` folds them into it.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import LowbitError
from .lora import LoraLinear, LoraSettings, candidate_modules, lora_layers, set_submodule

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    """peft's target_modules for exactly ``names``: the short suffixes when they select exactly
    these layers (peft matches by suffix), else a full-match regex of the names."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    # The layers peft will see in the float model: today's LoRA layers and the other Linears,
    # not the pieces inside a LoRA layer.
    inside = tuple(f"{n}." for n in names)
    pool = [n for n in candidate_modules(model, whole_model=True) if not n.startswith(inside)] + names
    picked = {n for n in pool if any(n == s or n.endswith("." + s) for s in suffixes)}
    if picked == set(names):
        return suffixes
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def adapter_config(model: nn.Module, settings: LoraSettings, base_model: str | None) -> dict:
    """The adapter_config.json of the LoRA layers in ``model``."""
    names = list(lora_layers(model))
    if not names:
        raise LowbitError("the model has no LoRA layers to save")
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": settings.r,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": _target_modules(model, names),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def save_adapter(model: nn.Module, folder: Path, settings: LoraSettings, base_model: str | None) -> None:
    """Write the adapter of ``model`` into ``folder`` (which must exist)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, m in lora_layers(model).items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    config = adapter_config(model, settings, base_model)
    save_file(tensors, str(Path(folder) / WEIGHTS_FILE), metadata={"format": "pt"})
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config, indent=2))


@dataclass
class Adapter:
    """A LoRA adapter read from disk. layers: module name -> (A [r, in], B [out, r]);
    scaling: module name -> alpha / r (or alpha / sqrt(r) with rsLoRA)."""

    config: dict
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: dict[str, float]


def read_adapter(folder: str | Path) -> Adapter:
    """Read and validate a peft LoRA adapter folder."""
    from ..models.checkpoint import read_tensors

    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise LowbitError(f"{folder} has no {CONFIG_FILE}: pass the folder that `lowbit train` (or peft) wrote")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise LowbitError(f"{cfg_path} is not valid JSON ({e.msg}): re-create the adapter") from None
    if config.get("peft_type") != "LORA":
        raise LowbitError(f"{folder} holds a {config.get('peft_type')!r} adapter; only LoRA adapters are supported")
    for key, why in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers")):
        if config.get(key):
            raise LowbitError(f"{folder}: {why} adapters are not supported; use a plain LoRA adapter")
    if config.get("alpha_pattern"):
        raise LowbitError(f"{folder}: per-layer alpha_pattern is not supported")
    if not (folder / WEIGHTS_FILE).is_file():
        raise LowbitError(f"{folder} has no {WEIGHTS_FILE}: the adapter is incomplete")
    tensors = read_tensors(folder)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if m is None:
            raise LowbitError(f"{folder}/{WEIGHTS_FILE} has tensor '{key}', which is not a LoRA A/B weight")
        layers.setdefault(m.group(1), {})[m.group(2)] = t
    out, scaling = {}, {}
    alpha = config.get("lora_alpha", 8)
    for name, ab in layers.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise LowbitError(f"{folder}: layer {name} has mismatched or missing lora_A/lora_B tensors")
        r = ab["A"].shape[0]
        out[name] = (ab["A"], ab["B"])
        scaling[name] = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return Adapter(config, out, scaling)


def check_fits(model: nn.Module, adapter: Adapter, where: str) -> None:
    """Every adapter layer exists in ``model`` with matching in/out sizes, else LowbitError."""
    for name, (a, b) in adapter.layers.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise LowbitError(f"adapter {where} has layer {name}, which this model does not have: "
                              "it was trained on another base model") from None
        if isinstance(m, LoraLinear):
            m = m.base_layer
        if (getattr(m, "in_features", None), getattr(m, "out_features", None)) != (a.shape[1], b.shape[0]):
            raise LowbitError(
                f"adapter {where} layer {name} is [{b.shape[0]} x {a.shape[1]}] but the model's is "
                f"[{getattr(m, 'out_features', '?')} x {getattr(m, 'in_features', '?')}]: it was trained on another base model"
            )


def load_adapter(model: nn.Module, folder: str | Path, dtype: torch.dtype = torch.float32) -> list[str]:
    """Put the adapter in ``folder`` on ``model`` as LoraLinear layers (dropout off); returns
    the adapted layer names."""
    adapter = read_adapter(folder)
    check_fits(model, adapter, str(folder))
    for name, (a, b) in adapter.layers.items():
        base = model.get_submodule(name)
        layer = LoraLinear(base, a.shape[0], 1.0, 0.0, dtype)
        layer.scaling = adapter.scaling[name]
        layer.lora_alpha = adapter.config.get("lora_alpha")
        with torch.no_grad():
            layer.lora_A.weight.copy_(a)
            layer.lora_B.weight.copy_(b)
        set_submodule(model, name, layer)
    return list(adapter.layers)


def load_lora_weights(model: nn.Module, folder: str | Path) -> None:
    """Copy an adapter's tensors into the LoraLinear layers ``model`` already has (resume);
    the layer sets and shapes must match exactly."""
    adapter = read_adapter(folder)
    have = lora_layers(model)
    if set(have) != set(adapter.layers):
        extra = sorted(set(adapter.layers) ^ set(have))[:3]
        raise LowbitError(f"adapter {folder} adapts other layers than this run ({', '.join(extra)} ...): "
                          "resume with the same --target-modules and model")
    for name, (a, b) in adapter.layers.items():
        m = have[name]
        if a.shape != m.lora_A.weight.shape or b.shape != m.lora_B.weight.shape:
            raise LowbitError(f"adapter {folder} layer {name} has rank {a.shape[0]}, this run {m.r}: "
                              "resume with the same --lora-r and model")
        with torch.no_grad():
            m.lora_A.weight.copy_(a)
            m.lora_B.weight.copy_(b)
