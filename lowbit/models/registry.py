"""Architecture registry: where each family keeps its decoder blocks and Linear layers.

Per-architecture knowledge is this table, keyed by ``config.model_type``; code elsewhere
never tests class names. Adding a family is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import LowbitError


@dataclass(frozen=True)
class ScaleGroup:
    """Linear layers that read the same input, and the op that produces that input.

    AWQ folds an input-channel scale into ``prev`` (a norm or a Linear) and its inverse
    into ``layers``. Names are relative to a decoder block.
    """

    prev: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Arch:
    """blocks: dotted path of the ``nn.ModuleList`` of decoder blocks.
    linears: the block's Linear layers in execution order (true-sequential GPTQ uses it);
    awq_groups: the scale groups of a block;
    norm_offset: 1.0 where norms compute x * (1 + weight) (Gemma), so AWQ folds a scale s
    into them as (1 + weight) / s - 1."""

    blocks: str
    linears: tuple[str, ...]
    awq_groups: tuple[ScaleGroup, ...] = field(default=())
    norm_offset: float = 0.0


_LLAMA_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)
_LLAMA_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
)
# Gemma2/3 put an extra norm after attention and before the MLP; the MLP's input comes
# from pre_feedforward_layernorm.
_GEMMA2_GROUPS = (
    _LLAMA_GROUPS[0],
    _LLAMA_GROUPS[1],
    ScaleGroup("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    _LLAMA_GROUPS[3],
)
_LLAMA = Arch("model.layers", _LLAMA_LINEARS, _LLAMA_GROUPS)

ARCHITECTURES: dict[str, Arch] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": Arch("model.layers", _LLAMA_LINEARS, _LLAMA_GROUPS, norm_offset=1.0),
    "gemma2": Arch("model.layers", _LLAMA_LINEARS, _GEMMA2_GROUPS, norm_offset=1.0),
    "gemma3_text": Arch("model.layers", _LLAMA_LINEARS, _GEMMA2_GROUPS, norm_offset=1.0),
    "gemma3": Arch("model.language_model.layers", _LLAMA_LINEARS, _GEMMA2_GROUPS, norm_offset=1.0),
    "phi3": Arch(
        "model.layers",
        ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
        (
            ScaleGroup("input_layernorm", ("self_attn.qkv_proj",)),
            ScaleGroup("post_attention_layernorm", ("mlp.gate_up_proj",)),
        ),
    ),
    "opt": Arch(
        "model.decoder.layers",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"),
        (
            ScaleGroup("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            ScaleGroup("self_attn.v_proj", ("self_attn.out_proj",)),
            ScaleGroup("final_layer_norm", ("fc1",)),
            ScaleGroup("fc1", ("fc2",)),
        ),
    ),
}


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def get_arch(model: nn.Module) -> Arch:
    return arch_for(model_type(model))


def arch_for(mt: str) -> Arch:
    """The registry entry of a ``config.model_type``; unsupported ones raise LowbitError."""
    if mt not in ARCHITECTURES:
        raise LowbitError(
            f"architecture '{mt}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[mt]


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model``, in order."""
    path = get_arch(model).blocks
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise LowbitError(
            f"model of type '{model_type(model)}' has no decoder blocks at '{path}': "
            "the registry entry does not match this transformers version"
        ) from None


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside a decoder block, by name relative to the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
