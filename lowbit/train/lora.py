"""LoRA: a trainable low-rank update beside a frozen (float or quantized) Linear layer.

y = base(x) + (dropout(x) @ A^T @ B^T) * alpha / r, with A [r, in] Kaiming-uniform and
B [out, r] zero at the start, so training starts from the base model exactly. Module and
parameter names follow peft (``base_layer``, ``lora_A``, ``lora_B``) so that the adapter
keys are peft's without renaming.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LowbitError
from ..models.registry import get_blocks


def linear_types() -> tuple[type, ...]:
    """Module types LoRA can wrap: nn.Linear and lowbit's quantized linears (frozen bases)."""
    from .. import nn as lnn

    extra = tuple(getattr(lnn, name) for name in ("Linear4bit", "QuantLinear") if hasattr(lnn, name))
    return (nn.Linear,) + extra


@dataclass
class LoraSettings:
    """r: rank; alpha: the update is scaled by alpha / r; target_modules: names or suffixes
    (``q_proj``, ``self_attn.q_proj``) of the layers to adapt, None = every Linear of the
    decoder blocks."""

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None
    dtype: torch.dtype = field(default=torch.float32)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise LowbitError(f"--lora-r {self.r} must be a positive integer, e.g. 16")
        if not self.alpha > 0:
            raise LowbitError(f"--lora-alpha {self.alpha} must be positive, e.g. 32")
        if not 0 <= self.dropout < 1:
            raise LowbitError(f"--lora-dropout {self.dropout} must be in [0, 1), e.g. 0.05")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoraLinear(nn.Module):
    """A frozen ``base_layer`` plus the trainable update B @ A * scaling.

    lora_A.weight: [r, in_features], lora_B.weight: [out_features, r], both in ``dtype``
    (fp32 by default, whatever the base's compute dtype: the update is small and its
    gradients want the precision).
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha, self.scaling = r, alpha, alpha / r
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device = _device_of(base_layer)
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's (and peft's) default
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in_features] in the base's compute dtype -> [..., out_features], same dtype
        y = frozen_forward(self.base_layer, x)
        a = self.lora_A.weight
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))) * self.scaling
        return y + update.to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """B @ A * scaling: float32 [out_features, in_features]."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.lora_alpha}"


class _FrozenQuantizedLinear(torch.autograd.Function):
    """y = layer(x) for a frozen quantized layer, with dx = dy @ W recomputed from the
    quantized weight in backward. Autograd through the layer's own forward would keep the
    whole dequantized weight alive until backward (the memory QLoRA exists to save), and a
    fused kernel may not be differentiable at all; bitsandbytes' MatMul4Bit does the same."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer
        with torch.no_grad():
            return layer(x)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        # grad_y: [..., N] -> grad_x: [..., K]; W [N, K] dequantized for this product only
        w = ctx.layer.dequantize(grad_y.dtype)
        return grad_y @ w, None


def frozen_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a frozen base layer, differentiable in x and memory-lean when quantized."""
    if isinstance(layer, nn.Linear) or not (x.requires_grad and torch.is_grad_enabled()):
        return layer(x)
    return _FrozenQuantizedLinear.apply(x, layer)


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def candidate_modules(model: nn.Module, whole_model: bool) -> dict[str, nn.Module]:
    """Linear-like modules by full name: those of the decoder blocks, or of the whole model."""
    types = linear_types()
    if whole_model:
        return {n: m for n, m in model.named_modules() if isinstance(m, types) and n}
    blocks = get_blocks(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks)
    return {f"{prefix}.{n}": m for n, m in blocks.named_modules() if isinstance(m, types)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, target_modules: list[str] | None) -> list[str]:
    """Full names of the layers to adapt. Each given target must match at least one layer
    (a typo would otherwise silently train fewer layers than asked)."""
    if not target_modules or target_modules in (["all-linear"], ["all"]):
        names = list(candidate_modules(model, whole_model=False))
        if not names:
            raise LowbitError("the model's decoder blocks have no Linear layers to adapt")
        return names
    pool = candidate_modules(model, whole_model=True)
    chosen, unmatched = [], []
    for t in target_modules:
        hits = [n for n in pool if _matches(n, t)]
        if not hits:
            unmatched.append(t)
        chosen += [h for h in hits if h not in chosen]
    if unmatched:
        available = sorted({n.rsplit(".", 1)[-1] for n in candidate_modules(model, whole_model=False)})
        raise LowbitError(
            f"--target-modules {' '.join(unmatched)} match no Linear layer of the model; "
            f"available in the decoder blocks: {', '.join(available)}"
        )
    return [n for n in pool if n in chosen]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Wrap the target layers in LoraLinear (in place), freeze everything else; returns the
    full names of the adapted layers."""
    names = resolve_targets(model, settings.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        if isinstance(base, LoraLinear):
            raise LowbitError(f"{name} already has a LoRA adapter")
        set_submodule(model, name, LoraLinear(base, settings.r, settings.alpha, settings.dropout, settings.dtype))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors by model key, e.g. ``model.layers.0.self_attn.q_proj.lora_A.weight``."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{name}.lora_A.weight"] = m.lora_A.weight
        out[f"{name}.lora_B.weight"] = m.lora_B.weight
    return out


def _logical_numel(module: nn.Module) -> int:
    """Weights a layer stands for: a quantized linear counts in*out (+bias), not its packed bytes."""
    if isinstance(module, linear_types()[1:]):
        bias = getattr(module, "bias", None)
        return module.in_features * module.out_features + (bias.numel() if bias is not None else 0)
    return sum(p.numel() for p in module.parameters(recurse=False))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters; tied weights count once, quantized weights as their
    logical size."""
    seen, total = set(), 0
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        key = tuple(p.data_ptr() for p in own)
        if own and key in seen:
            continue
        seen.add(key)
        total += _logical_numel(m)
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    return trainable, total


def trainable_summary(model: nn.Module) -> str:
    """peft's line: ``trainable params: X || all params: Y || trainable%: Z``."""
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
