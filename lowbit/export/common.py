"""What the interchange formats share: one layer's integer weights unpacked, group splitting,
and the model-level loops that write and read a checkpoint folder.

Every format converts to and from ``IntWeights`` (plain tensors, GPTQ orientation), and
``QuantLinear`` is built from it: reading any format ends in the same module the quantize
path produces.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import LowbitError
from ..formats import pack, unpack
from ..models.checkpoint import (REPORT_FILE, _unique_state_dict, assign_tensors, empty_model, read_tensors,
                                 save_state_dict, set_module)
from ..nn import QuantLinear

log = logging.getLogger(__name__)


@dataclass
class IntWeights:
    """Group-wise integer weights of one Linear, unpacked (K = in_features, N = out_features).

    codes:  uint8 [K, N]   q, in [0, 2**bits)
    zeros:  uint8 [G, N]   zero points as they are: w = scale * (q - zero)
    scales: float [G, N]   in the dtype a checkpoint stores them
    g_idx:  int32 [K]      group of each input column
    bias:   float [N] or None
    """

    codes: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    bias: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.codes.shape[0]

    @property
    def out_features(self) -> int:
        return self.codes.shape[1]

    @property
    def groups(self) -> int:
        return self.scales.shape[0]

    def group_sizes(self) -> torch.Tensor:
        """Columns in each group: int64 [G]."""
        return torch.bincount(self.g_idx.long(), minlength=self.groups)

    def is_symmetric(self) -> bool:
        """All zero points sit at the middle code 2**(bits-1) (the symmetric convention)."""
        return bool((self.zeros == 2 ** (self.bits - 1)).all())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Weight [N, K] = scale * (q - zero), computed in ``dtype``."""
        g = self.g_idx.long()
        w = (self.codes.to(dtype) - self.zeros.to(dtype)[g]) * self.scales.to(dtype)[g]
        return w.t()


def from_quant_linear(layer: QuantLinear) -> IntWeights:
    k, n = layer.in_features, layer.out_features
    return IntWeights(
        codes=unpack(layer.qweight, layer.bits, k, dim=0),
        zeros=unpack(layer.qzeros, layer.bits, n, dim=1),
        scales=layer.scales,
        g_idx=layer.g_idx.to(torch.int32),
        bits=layer.bits,
        bias=layer.bias,
    )


def to_quant_linear(w: IntWeights, group_size: int) -> QuantLinear:
    """The QuantLinear (lowbit's buffers: GPTQ layout, zeros as they are) holding ``w``."""
    layer = QuantLinear(w.in_features, w.out_features, w.bits, group_size, w.bias is not None,
                        scale_dtype=w.scales.dtype, device="meta")
    layer.qweight = pack(w.codes, w.bits, dim=0)
    layer.qzeros = pack(w.zeros, w.bits, dim=1)
    layer.scales = w.scales.contiguous()
    layer.g_idx = w.g_idx.to(torch.int32).contiguous()
    if w.bias is not None:
        layer.bias = w.bias
    return layer


def is_contiguous(g_idx: torch.Tensor, group_size: int) -> bool:
    """g_idx is plain ``k // group_size`` (no act-order permutation)."""
    k = g_idx.shape[0]
    expected = torch.zeros(k, dtype=torch.int64) if group_size == -1 else torch.arange(k) // group_size
    return torch.equal(g_idx.long().cpu(), expected)


def common_group_size(weights: Iterable[IntWeights]) -> int:
    """The largest group size every layer's groups split into exactly (-1: one group per row).

    A ragged last group (576 columns with group 128 leave 64) is not expressible where a format
    derives groups as ``k // group_size`` with ``K % group_size == 0`` (vLLM, AWQ, compressed-
    tensors); splitting every group into equal parts with the same scale and zero point is
    exact, so 128 over 576 columns is written as group 64.
    """
    weights = list(weights)
    if all(w.groups == 1 for w in weights):
        return -1
    g = 0
    for w in weights:
        for size in w.group_sizes().tolist():
            g = math.gcd(g, size)
    return g


def split_groups(w: IntWeights, group_size: int) -> IntWeights:
    """The same weights with every group split into consecutive parts of ``group_size`` columns.

    Columns of an old group keep their order inside it (act-order g_idx stays act-order); each
    part copies the old group's scale and zero point, so the dequantized weight is unchanged.
    """
    k = w.in_features
    if group_size == -1 or (w.groups == 1 and group_size == k):
        if w.groups != 1:
            raise ValueError(f"{w.groups} groups cannot be written as one group per row")
        return w
    sizes = w.group_sizes()
    if bool((sizes % group_size).any()):
        raise ValueError(f"group sizes {sorted(set(sizes.tolist()))} do not split into parts of {group_size}")
    if bool((sizes == group_size).all()):
        return w
    g = w.g_idx.long()
    order = torch.argsort(g, stable=True)  # columns grouped by old group, ascending inside
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(k) - starts[g[order]]
    parts = sizes // group_size
    first_part = torch.cumsum(parts, 0) - parts
    new_g_idx = torch.empty(k, dtype=torch.int32)
    new_g_idx[order] = (first_part[g[order]] + rank // group_size).to(torch.int32)
    old_of_new = torch.repeat_interleave(torch.arange(w.groups), parts)
    return replace(w, zeros=w.zeros[old_of_new], scales=w.scales[old_of_new], g_idx=new_g_idx)


def check_common_group_size(group_size: int, configured: int, fmt: str) -> None:
    if group_size not in (-1, configured):
        log.warning("%s: group size %s written as %s (exact: each group split into equal parts "
                    "sharing its scale and zero point)", fmt, configured, group_size)
    if group_size != -1 and group_size < 32:
        raise LowbitError(
            f"{fmt}: the layers' groups only split evenly into groups of {group_size} columns, too small for "
            "vLLM's kernels (32 at least): quantize with a group size that divides every layer's input width, "
            "or keep --format lowbit"
        )


def half_scales(scales: torch.Tensor, name: str) -> torch.Tensor:
    """Scales in fp16 (what GPTQ and AWQ kernels read); other dtypes are kept if fp16 would round them."""
    if scales.dtype == torch.float16:
        return scales
    half = scales.to(torch.float16)
    if torch.equal(half.to(scales.dtype), scales):
        return half
    log.warning("%s: scales are %s and not exactly representable in fp16; kept as %s",
                name, scales.dtype, scales.dtype)
    return scales


# ---------------------------------------------------------------------------------- model level


def quant_linears(model: nn.Module, fmt: str) -> dict[str, QuantLinear]:
    """Every QuantLinear of the model by name; other quantized module types cannot be exported."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            layers[name] = module
        elif type(module).__module__.startswith("lowbit.nn"):
            raise LowbitError(
                f"layer {name} is a {type(module).__name__}: the {fmt} format holds group-wise integer "
                "weights (rtn, gptq, awq) only; keep --format lowbit for this model"
            )
    if not layers:
        raise LowbitError(
            f"the model has no group-wise integer layers to write as {fmt}: quantize it first "
            f"(lowbit quantize --format {fmt})"
        )
    return layers


def float_linears(model: nn.Module) -> list[str]:
    """Names of the Linear layers left in float (skipped modules, lm_head)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def write_model(model: nn.Module, tokenizer, out: Path, quantization_config: dict,
                layer_tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write config.json (with ``quantization_config``), safetensors shards and tokenizer files.

    layer_tensors: per quantized layer name, the format's tensors by suffix (replacing the
    QuantLinear buffers); every other tensor of the model is written as it is.
    """
    state: dict[str, torch.Tensor] = {}
    for key, t in _unique_state_dict(model).items():
        if key.rpartition(".")[0] not in layer_tensors:
            state[key] = t.cpu()
    for name, tensors in layer_tensors.items():
        for suffix, t in tensors.items():
            state[f"{name}.{suffix}"] = t.detach().cpu().contiguous()
    save_state_dict(state, out)
    had = hasattr(model.config, "quantization_config")
    previous = getattr(model.config, "quantization_config", None)
    model.config.quantization_config = quantization_config
    try:
        model.config.save_pretrained(out)
    finally:
        if had:
            model.config.quantization_config = previous
        else:
            del model.config.quantization_config
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


LayerBuilder = Callable[[str, nn.Linear, dict], IntWeights]


def read_model(folder: Path, dtype: torch.dtype | None, marker: str, build: LayerBuilder,
               quant_config: QuantConfig, group_size_of: Callable[[str], int]) -> nn.Module:
    """The model of a checkpoint folder with a QuantLinear wherever ``name.<marker>`` is stored.

    build(name, linear, tensors) turns one layer's tensors (by suffix, popped from the file's
    tensors) into IntWeights; float tensors are cast to ``dtype``.
    """
    dtype = dtype or torch.float32
    model = empty_model(Path(folder), dtype)
    tensors = read_tensors(Path(folder))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and f"{name}.{marker}" in tensors:
            prefix = f"{name}."
            own = {k[len(prefix):]: tensors.pop(k) for k in list(tensors)
                   if k.startswith(prefix) and "." not in k[len(prefix):]}
            w = build(name, module, own)
            if w.bias is not None:
                w.bias = w.bias.to(dtype)
            set_module(model, name, to_quant_linear(w, group_size_of(name)))
    stray = [k for k in tensors if k.endswith(f".{marker}")]
    if stray:
        raise LowbitError(f"checkpoint {folder} holds quantized tensor '{stray[0]}' for a layer that is not a "
                          "Linear of this architecture: the checkpoint does not match its config.json")
    tensors = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in tensors.items()}
    assign_tensors(model, tensors, Path(folder))
    model.quant_config = quant_config
    return model.eval()


def expect(name: str, tensors: dict, suffix: str, shape: tuple, dtype: torch.dtype | None, why: str) -> torch.Tensor:
    """tensors[suffix] checked against shape and dtype; errors name the tensor and the expectation."""
    full = f"{name}.{suffix}"
    if suffix not in tensors:
        raise LowbitError(f"tensor '{full}' is missing: the checkpoint is incomplete ({why})")
    t = tensors[suffix]
    if tuple(t.shape) != tuple(shape):
        raise LowbitError(f"tensor '{full}' has shape {list(t.shape)}, expected {list(shape)} for {why}: "
                          "the checkpoint does not match its quantization_config")
    if dtype is not None and t.dtype != dtype:
        raise LowbitError(f"tensor '{full}' has dtype {str(t.dtype).replace('torch.', '')}, expected "
                          f"{str(dtype).replace('torch.', '')}: the checkpoint does not match its quantization_config")
    return t


def source_method(folder: Path, default: str) -> str:
    """The quantization method recorded in lowbit_report.json, else ``default`` (the format's usual one)."""
    path = Path(folder) / REPORT_FILE
    try:
        method = json.loads(path.read_text())["quantization_config"]["method"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    return method if isinstance(method, str) else default


def config_int(qc: dict, keys: tuple[str, ...], fmt: str, default: int | None = None) -> int:
    for key in keys:
        if key in qc:
            value = qc[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise LowbitError(f"{fmt} quantization_config '{key}' must be an integer, got {value!r}")
            return value
    if default is None:
        raise LowbitError(f"{fmt} quantization_config is missing '{keys[0]}': the checkpoint is malformed")
    return default


def check_bits(bits: int, supported: tuple[int, ...], fmt: str) -> None:
    if bits not in supported:
        raise LowbitError(f"{fmt} checkpoint with {bits}-bit weights is not supported: lowbit reads "
                          f"{', '.join(map(str, supported))} bits")
