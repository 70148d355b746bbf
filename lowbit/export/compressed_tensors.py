"""compressed-tensors ``pack-quantized`` checkpoints (what llm-compressor writes for W4A16/W8A16),
loaded natively by vLLM and by transformers with the ``compressed-tensors`` package.

Tensors of a quantized Linear ``name`` (K = in_features, N = out_features, G groups, b bits):

    name.weight_packed      int32 [N, ceil(K*b/32)]  codes along K as one little-endian bit stream;
                                                     the file's signed code q - 2**(b-1) is stored
                                                     shifted by 2**(b-1), i.e. as our unsigned q
    name.weight_scale       [N, G]                   (G = 1 for the "channel" strategy)
    name.weight_zero_point  int32 [ceil(N*b/32), G]  asymmetric schemes only: zero points packed
                                                     along N, shifted the same way (our unsigned z)
    name.weight_shape       int64 [2] = [N, K]
    name.weight_g_idx       int32 [K]                only for the retired actorder "group" (read only)

and w = scale * (q_signed - zp_signed) = scale * (q - z): the GPTQ codes transposed. Symmetric
schemes store no zero point: it is 2**(b-1) in our unsigned terms.

Written: 4 and 8 bits (vLLM's W4A16/W8A16 kernels), 2 bits with a warning (compressed-tensors
packs it since mid-2026; vLLM's kernels do not run it); 3 bits is refused because compressed-
tensors releases disagree on it (padded 10 codes per word, later a dense stream). Act-order
g_idx is refused: compressed-tensors removed group act-order from its schemes. Ragged groups
are split into the largest common group size (compressed-tensors requires K % group_size == 0).
Scales are written in the model's float dtype when that is exact (fp16 scales of an fp32 model
become fp32), so transformers' dequantization reproduces lowbit's weights bit for bit.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import LowbitError
from ..formats import group_index, pack, packed_length, unpack
from . import common
from .common import IntWeights

log = logging.getLogger(__name__)

FORMAT = "compressed-tensors"
PACKED = "pack-quantized"
WRITE_BITS = (2, 4, 8)
READ_BITS = (2, 3, 4, 8)


def to_compressed(w: IntWeights, symmetric: bool, scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {
        "weight_packed": pack(w.codes.t(), w.bits, dim=1),
        "weight_scale": w.scales.t().to(scale_dtype).contiguous(),
        "weight_shape": torch.tensor([w.out_features, w.in_features], dtype=torch.int64),
    }
    if not symmetric:
        out["weight_zero_point"] = pack(w.zeros.t(), w.bits, dim=0)
    if w.bias is not None:
        out["bias"] = w.bias
    return out


def from_compressed(name: str, tensors: dict, in_features: int, out_features: int, args: dict) -> IntWeights:
    """IntWeights of one layer from its pack-quantized tensors and its scheme's weight args."""
    k, n = in_features, out_features
    bits = args["num_bits"]
    group_size = args["group_size"]
    groups = 1 if group_size == -1 else k // group_size
    why = f"{bits}-bit pack-quantized weights of a {n}x{k} layer in {groups} group(s)"
    packed = common.expect(name, tensors, "weight_packed", (n, packed_length(k, bits)), torch.int32, why)
    scales = common.expect(name, tensors, "weight_scale", (n, groups), None, why)
    if "weight_shape" in tensors and tensors["weight_shape"].tolist() != [n, k]:
        raise LowbitError(f"tensor '{name}.weight_shape' is {tensors['weight_shape'].tolist()}, expected {[n, k]}: "
                          "the checkpoint does not match its config.json")
    if args["symmetric"]:
        zeros = torch.full((groups, n), 2 ** (bits - 1), dtype=torch.uint8)
    else:
        zp = common.expect(name, tensors, "weight_zero_point", (packed_length(n, bits), groups), torch.int32,
                           why + " with zero points")
        zeros = unpack(zp, bits, n, dim=0).t()
    if args["actorder"] == "group":
        g_idx = common.expect(name, tensors, "weight_g_idx", (k,), None, why + " in act-order").to(torch.int32)
        if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
            raise LowbitError(f"tensor '{name}.weight_g_idx' names groups outside [0, {groups}): the checkpoint is corrupt")
    else:
        g_idx = group_index(k, group_size)
    return IntWeights(codes=unpack(packed, bits, k, dim=1).t(), zeros=zeros.contiguous(), scales=scales.t(),
                      g_idx=g_idx, bits=bits, bias=tensors.get("bias"))


def quantization_config(bits: int, group_size: int, symmetric: bool, ignore: list[str]) -> dict:
    weights = {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "channel" if group_size == -1 else "group",
        "group_size": None if group_size == -1 else group_size,
        "dynamic": False,
        "observer": "minmax",
    }
    return {
        "quant_method": FORMAT,
        "format": PACKED,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": PACKED}},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "global_compression_ratio": None,
    }


def write(model: nn.Module, tokenizer, cfg: QuantConfig | None, out: Path) -> dict:
    """Write ``model`` (with QuantLinear layers) as a compressed-tensors pack-quantized checkpoint."""
    layers = common.quant_linears(model, FORMAT)
    weights = {name: common.from_quant_linear(layer) for name, layer in layers.items()}
    bits = {w.bits for w in weights.values()}
    if len(bits) != 1:
        raise LowbitError(f"{FORMAT}: layers use different bits {sorted(bits)}: one checkpoint holds one setting")
    bits = bits.pop()
    if bits not in WRITE_BITS:
        raise LowbitError(f"{FORMAT}: {bits}-bit weights have no pack-quantized layout that every compressed-tensors "
                          "release reads the same way: use --format gptq")
    if bits == 2:
        log.warning("%s: 2-bit pack-quantized loads in transformers with a recent compressed-tensors; vLLM's "
                    "kernels take 4 and 8 bits", FORMAT)
    configured = cfg.group_size if cfg is not None else next(iter(layers.values())).group_size
    group_size = common.common_group_size(weights.values())
    common.check_common_group_size(group_size, configured, FORMAT)
    weights = {name: common.split_groups(w, group_size) for name, w in weights.items()}
    for name, w in weights.items():
        if not common.is_contiguous(w.g_idx, group_size):
            raise LowbitError(f"{FORMAT}: layer {name} was quantized with act-order (a permuted g_idx), which "
                              "compressed-tensors no longer represents: use --format gptq")
    symmetric = all(w.is_symmetric() for w in weights.values())
    scale_dtype = _float_dtype(model)
    if any(not torch.equal(w.scales.to(scale_dtype).to(w.scales.dtype), w.scales) for w in weights.values()):
        scale_dtype = next(iter(weights.values())).scales.dtype  # keep them exact
    tensors = {name: to_compressed(w, symmetric, scale_dtype) for name, w in weights.items()}
    qc = quantization_config(bits, group_size, symmetric, common.float_linears(model))
    common.write_model(model, tokenizer, out, qc, tensors)
    return qc


def _float_dtype(model: nn.Module) -> torch.dtype:
    emb = model.get_input_embeddings()
    return emb.weight.dtype if emb is not None else torch.float32


# ------------------------------------------------------------------------------------------- read


def _weight_args(group: str, scheme: dict) -> dict:
    """The weight quantization arguments lowbit needs from one config group, validated."""
    w = scheme.get("weights")
    if not isinstance(w, dict):
        raise LowbitError(f"{FORMAT} config group {group!r} quantizes no weights: lowbit reads weight quantization")
    if scheme.get("input_activations") or scheme.get("output_activations"):
        raise LowbitError(f"{FORMAT} config group {group!r} quantizes activations too; lowbit reads weight-only "
                          "schemes (W4A16, W8A16)")
    if str(w.get("type", "int")).lower() != "int":
        raise LowbitError(f"{FORMAT} config group {group!r} has {w.get('type')} weights; lowbit reads int weights")
    bits = w.get("num_bits")
    common.check_bits(bits, READ_BITS, FORMAT)
    strategy = str(w.get("strategy") or ("group" if (w.get("group_size") or 0) > 0 else "channel")).lower()
    if strategy == "group":
        group_size = w.get("group_size")
        if not isinstance(group_size, int) or group_size <= 0:
            raise LowbitError(f"{FORMAT} config group {group!r}: strategy group needs a positive group_size")
    elif strategy == "channel":
        group_size = -1
    else:
        raise LowbitError(f"{FORMAT} config group {group!r} uses strategy {strategy!r}; lowbit reads 'group' and "
                          "'channel'")
    actorder = w.get("actorder")
    actorder = "group" if actorder is True else (str(actorder).lower() if actorder else None)
    return {"num_bits": bits, "group_size": group_size, "symmetric": bool(w.get("symmetric", True)),
            "actorder": "group" if actorder in ("group", "dynamic") else None}


def _matches(target: str, name: str, module: nn.Module) -> bool:
    cls = type(module).__name__
    if target.startswith("re:"):
        return bool(re.match(target[3:], name) or re.match(target[3:], cls))
    return target in (name, cls)


def read(folder: Path, config: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of a compressed-tensors pack-quantized folder, with QuantLinear layers, on CPU."""
    qc = config.get("quantization_config") or {}
    status = qc.get("quantization_status", "compressed")
    if status != "compressed":
        raise LowbitError(f"{FORMAT} quantization_status {status!r}: lowbit reads compressed checkpoints")
    if qc.get("sparsity_config") or qc.get("transform_config"):
        raise LowbitError(f"{FORMAT} checkpoint with sparsity or transforms is not supported: lowbit reads "
                          f"{PACKED} weight-only checkpoints")
    groups = qc.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise LowbitError(f"{FORMAT} quantization_config has no config_groups: the checkpoint is malformed")
    schemes = []
    for group, scheme in groups.items():
        fmt = scheme.get("format") or qc.get("format")
        if fmt != PACKED:
            raise LowbitError(f"{FORMAT} format {fmt!r} is not supported: lowbit reads {PACKED!r}")
        schemes.append((scheme.get("targets") or ["Linear"], _weight_args(group, scheme)))
    ignore = qc.get("ignore") or []
    group_sizes: dict[str, int] = {}

    def build(name: str, linear: nn.Linear, tensors: dict) -> IntWeights:
        if any(_matches(t, name, linear) for t in ignore):
            raise LowbitError(f"tensor '{name}.weight_packed' belongs to a layer the config ignores")
        args = next((a for targets, a in schemes if any(_matches(t, name, linear) for t in targets)), None)
        if args is None:
            raise LowbitError(f"tensor '{name}.weight_packed' matches no config group's targets")
        k = linear.in_features
        if args["group_size"] != -1 and k % args["group_size"]:
            raise LowbitError(f"layer {name} has {k} input features, not a multiple of group_size {args['group_size']}")
        group_sizes[name] = args["group_size"]
        return from_compressed(name, tensors, k, linear.out_features, args)

    first = schemes[0][1]
    cfg = QuantConfig(method=common.source_method(folder, "gptq"), bits=first["num_bits"],
                      group_size=first["group_size"], sym=first["symmetric"], act_order=first["actorder"] == "group",
                      format=FORMAT)
    return common.read_model(folder, dtype, "weight_packed", build, cfg, lambda name: group_sizes[name])
