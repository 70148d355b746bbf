"""AWQ checkpoints in AutoAWQ's GEMM layout (``quant_method: "awq"``, ``version: "gemm"``).

Tensors of a quantized Linear ``name`` (K = in_features, N = out_features, G = K / group_size):

    name.qweight  int32 [K, N/8]  4-bit codes packed along N (the output dim)
    name.qzeros   int32 [G, N/8]  zero points, packed the same way, stored as they are
    name.scales   fp16  [G, N]
    name.bias     [N], when the layer has one

Inside each int32 word, nibble i (bits 4i..4i+3) holds column ``8j + AWQ_ORDER[i]`` of the
word's block of 8 columns, AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (the interleave AutoAWQ's GEMM
kernels unpack in registers). There is no g_idx: groups are consecutive, g = k // group_size,
and w = scales * (q - zeros).

What the layout cannot hold is refused rather than approximated: other bit widths than 4
(AutoAWQ and vLLM's AWQ kernels are 4-bit only), act-order g_idx, a quantized lm_head (AWQ
loaders keep it in float), out_features not a multiple of 8. Symmetric weights are written with
their zero point 8 explicit (``zero_point: true``), which is exact. Ragged groups are split
into the largest common group size (see ``common.common_group_size``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import LowbitError
from ..formats import group_index, pack, unpack
from . import common
from .common import IntWeights

log = logging.getLogger(__name__)

FORMAT = "awq"
BITS = 4
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _interleave(n: int) -> torch.Tensor:
    """perm [N]: packed position p holds column perm[p] (blocks of 8 in AWQ_ORDER)."""
    return (torch.arange(n).view(-1, 8)[:, list(AWQ_ORDER)]).flatten()


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [R, N] 4-bit codes -> int32 [R, N/8] in AWQ's interleaved order."""
    return pack(codes[:, _interleave(codes.shape[1])], BITS, dim=1)


def unpack_awq(words: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [R, N/8] -> uint8 [R, N] codes in column order."""
    packed_order = unpack(words, BITS, n, dim=1)
    codes = torch.empty_like(packed_order)
    codes[:, _interleave(n)] = packed_order
    return codes


def to_awq(w: IntWeights, name: str = "layer") -> dict[str, torch.Tensor]:
    out = {"qweight": pack_awq(w.codes), "qzeros": pack_awq(w.zeros), "scales": common.half_scales(w.scales, name)}
    if w.bias is not None:
        out["bias"] = w.bias
    return out


def from_awq(name: str, tensors: dict, in_features: int, out_features: int, group_size: int) -> IntWeights:
    k, n = in_features, out_features
    if n % 8:
        raise LowbitError(f"layer {name} has {n} output features, not a multiple of 8: no AWQ GEMM layout holds it")
    if k % group_size:
        raise LowbitError(f"layer {name} has {k} input features, not a multiple of the AWQ group size {group_size}")
    groups = k // group_size
    why = f"4-bit AWQ weights of a {n}x{k} layer in {groups} group(s)"
    qweight = common.expect(name, tensors, "qweight", (k, n // 8), torch.int32, why)
    qzeros = common.expect(name, tensors, "qzeros", (groups, n // 8), torch.int32, why)
    scales = common.expect(name, tensors, "scales", (groups, n), None, why)
    return IntWeights(codes=unpack_awq(qweight, n), zeros=unpack_awq(qzeros, n), scales=scales,
                      g_idx=group_index(k, group_size), bits=BITS, bias=tensors.get("bias"))


def write(model: nn.Module, tokenizer, cfg: QuantConfig | None, out: Path) -> dict:
    """Write ``model`` (with QuantLinear layers) as an AutoAWQ GEMM checkpoint into ``out``."""
    layers = common.quant_linears(model, FORMAT)
    if "lm_head" in layers:
        raise LowbitError("awq: the AWQ format keeps lm_head in float (AutoAWQ, vLLM): quantize without "
                          "--quantize-lm-head, or use --format gptq / compressed-tensors")
    weights = {name: common.from_quant_linear(layer) for name, layer in layers.items()}
    for name, w in weights.items():
        if w.bits != BITS:
            raise LowbitError(f"awq: layer {name} has {w.bits}-bit weights; the AWQ GEMM layout (AutoAWQ, vLLM) "
                              "holds 4-bit weights only: use --format gptq or compressed-tensors")
        if w.out_features % 8:
            raise LowbitError(f"awq: layer {name} has {w.out_features} output features, not a multiple of 8 "
                              "(8 codes per int32 word): use --format gptq")
    configured = cfg.group_size if cfg is not None else next(iter(layers.values())).group_size
    group_size = common.common_group_size(weights.values())
    if group_size == -1:
        # One group per row is AWQ group size K; layers of different K share their gcd.
        group_size = math.gcd(*(w.in_features for w in weights.values()))
        log.warning("awq: one group per row written as group size %d (exact; AWQ has no per-channel mode)",
                    group_size)
        configured = group_size
    common.check_common_group_size(group_size, configured, FORMAT)
    weights = {name: common.split_groups(w, group_size) for name, w in weights.items()}
    for name, w in weights.items():
        if not common.is_contiguous(w.g_idx, group_size):
            raise LowbitError(f"awq: layer {name} was quantized with act-order (a permuted g_idx), which the AWQ "
                              "layout cannot store: use --format gptq")
    skipped = common.float_linears(model)
    qc = {"quant_method": FORMAT, "bits": BITS, "group_size": group_size, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": skipped or None}
    common.write_model(model, tokenizer, out, qc, {name: to_awq(w, name) for name, w in weights.items()})
    return qc


def read(folder: Path, config: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of an AutoAWQ GEMM checkpoint folder, with QuantLinear layers, on CPU."""
    qc = config.get("quantization_config") or {}
    bits = common.config_int(qc, ("bits", "w_bit"), FORMAT)
    if bits != BITS:
        raise LowbitError(f"awq checkpoint with {bits}-bit weights is not supported: the AWQ GEMM layout is 4-bit")
    group_size = common.config_int(qc, ("group_size", "q_group_size"), FORMAT)
    if group_size <= 0:
        raise LowbitError(f"awq quantization_config group_size {group_size} is invalid: expected a positive size")
    version = str(qc.get("version", "gemm")).lower()
    if version != "gemm":
        raise LowbitError(f"awq version {version!r} is not supported: lowbit reads the GEMM layout (version 'gemm')")
    if not qc.get("zero_point", True):
        raise LowbitError("awq checkpoint without zero points (zero_point: false) is not supported")

    def build(name: str, linear: nn.Linear, tensors: dict) -> IntWeights:
        return from_awq(name, tensors, linear.in_features, linear.out_features, group_size)

    cfg = QuantConfig(method=common.source_method(folder, "awq"), bits=bits, group_size=group_size, sym=False,
                      format=FORMAT)
    return common.read_model(folder, dtype, "qweight", build, cfg, lambda name: group_size)
