"""GPTQ checkpoints (the AutoGPTQ / GPTQModel layout, ``quant_method: "gptq"``), written and read.

Tensors of a quantized Linear ``name`` (K = in_features, N = out_features, G groups, b bits):

    name.qweight  int32 [ceil(K*b/32), N]  codes packed along K, first code in the lowest bits;
                                           3-bit codes run as one bit stream (32 codes in 3 words)
    name.qzeros   int32 [G, ceil(N*b/32)]  zero points packed along N, same bit order
    name.scales   fp16  [G, N]
    name.g_idx    int32 [K]                group of each input column (act-order permutes it)
    name.bias     [N], when the layer has one

and w[n, k] = scales[g, n] * (q[k, n] - z[g, n]) with g = g_idx[k]. lowbit's QuantLinear holds
exactly these buffers, with z stored as it is.

Zero points. ``checkpoint_format: "gptq"`` (v1: AutoGPTQ, and what every loader reads,
vLLM's gptq/gptq_marlin kernels included) stores z - 1 per element and the kernels add the 1
back after unpacking. ``"gptq_v2"`` (GPTQModel) stores z. A zero point of 0 - asymmetric
quantization of a group with no negative weight - has no v1 code: z - 1 = -1 would wrap to
2**b - 1, which v1 readers decode as 2**b (vLLM) or carry into the neighbouring code
(GPTQModel's word-wise +0x11111111). So the writer picks v1 whenever it is exact (always for
symmetric weights) and gptq_v2 otherwise, with a warning: gptq_v2 loads in GPTQModel/transformers
and in vLLM versions with gptq_v2 support (vLLM PR 26092), not in older vLLM. The reader
refuses a v1 file holding the code 2**b - 1 for the same reason.

Ragged groups (K % group_size != 0) are written as the largest common group size that splits
every group exactly (``common.common_group_size``): vLLM refuses ragged groups.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..config import QuantConfig
from ..errors import LowbitError
from ..formats import group_index, pack, packed_length, unpack
from . import common
from .common import IntWeights

log = logging.getLogger(__name__)

FORMAT = "gptq"
BITS = (2, 3, 4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def to_gptq(w: IntWeights, v1: bool, name: str = "layer") -> dict[str, torch.Tensor]:
    """The GPTQ tensors of one layer (suffix -> tensor)."""
    zeros = w.zeros.to(torch.int64)
    if v1:
        if bool((zeros == 0).any()):
            raise LowbitError(
                f"{name}: a zero point of 0 has no GPTQ v1 code (v1 stores zero - 1): write "
                "checkpoint_format gptq_v2 (--checkpoint-format gptq_v2 or auto)"
            )
        zeros = zeros - 1
    out = {
        "qweight": pack(w.codes, w.bits, dim=0),
        "qzeros": pack(zeros, w.bits, dim=1),
        "scales": common.half_scales(w.scales, name),
        "g_idx": w.g_idx.to(torch.int32),
    }
    if w.bias is not None:
        out["bias"] = w.bias
    return out


def from_gptq(name: str, tensors: dict, in_features: int, out_features: int, bits: int, group_size: int,
              v1: bool, desc_act: bool) -> IntWeights:
    """IntWeights of one layer from its GPTQ tensors, every shape and dtype checked."""
    k, n = in_features, out_features
    groups = 1 if group_size == -1 else -(-k // group_size)
    why = f"{bits}-bit weights of a {n}x{k} layer in {groups} group(s)"
    qweight = common.expect(name, tensors, "qweight", (packed_length(k, bits), n), torch.int32, why)
    qzeros = common.expect(name, tensors, "qzeros", (groups, packed_length(n, bits)), torch.int32, why)
    scales = common.expect(name, tensors, "scales", (groups, n), None, why)
    if "g_idx" in tensors:
        g_idx = common.expect(name, tensors, "g_idx", (k,), None, why).to(torch.int32)
        if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
            raise LowbitError(f"tensor '{name}.g_idx' names groups outside [0, {groups}): the checkpoint is corrupt")
    elif desc_act:
        raise LowbitError(f"tensor '{name}.g_idx' is missing: an act-order (desc_act) checkpoint needs it")
    else:
        g_idx = group_index(k, group_size)
    zeros = unpack(qzeros, bits, n, dim=1).to(torch.int64)
    if v1:
        if bool((zeros == 2**bits - 1).any()):
            raise LowbitError(
                f"tensor '{name}.qzeros' holds the GPTQ v1 code {2**bits - 1}, a wrapped zero point of 0 that "
                "loaders decode differently: re-export the model with checkpoint_format gptq_v2"
            )
        zeros = zeros + 1
    bias = tensors.get("bias")
    return IntWeights(codes=unpack(qweight, bits, k, dim=0), zeros=zeros.to(torch.uint8), scales=scales,
                      g_idx=g_idx, bits=bits, bias=bias)


def quantization_config(bits: int, group_size: int, desc_act: bool, sym: bool, checkpoint_format: str,
                        lm_head: bool, cfg: QuantConfig | None, skipped: list[str],
                        block_modules: list[list[str]] | None = None) -> dict:
    qc = {
        "quant_method": FORMAT,
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "lm_head": lm_head,
        "checkpoint_format": checkpoint_format,
        "pack_dtype": "int32",
        "meta": {"quantizer": [f"lowbit:{__version__}"]},
    }
    if cfg is not None:
        qc.update(true_sequential=cfg.true_sequential, damp_percent=cfg.damp_percent, static_groups=cfg.static_groups)
    if skipped:
        # GPTQModel's and vLLM's per-module override: "-:" + regex = leave this module in float.
        qc["dynamic"] = {f"-:^{re.escape(name)}$": {} for name in skipped}
        if block_modules:
            # transformers' GPTQ path (optimum) ignores "dynamic": it quantizes the Linear layers of
            # each block whose names end with one of these.
            qc["modules_in_block_to_quantize"] = block_modules
    return qc


def block_modules(model: nn.Module, quantized: list[str]) -> list[list[str]] | None:
    """[[block-relative names]] of the quantized layers when every block quantizes the same ones."""
    from ..models.registry import get_arch, get_blocks

    prefix = get_arch(model).blocks + "."
    per_block: dict[str, set] = {str(i): set() for i in range(len(get_blocks(model)))}
    for name in quantized:
        if name.startswith(prefix):
            index, _, rel = name[len(prefix):].partition(".")
            per_block[index].add(rel)
    kinds = {frozenset(s) for s in per_block.values()}
    if len(kinds) != 1 or not next(iter(kinds)):
        log.warning("gptq: blocks quantize different layers; transformers' GPTQ loader (optimum) cannot express "
                    "that and will expect every Linear to be quantized (vLLM and GPTQModel read 'dynamic')")
        return None
    return [sorted(next(iter(kinds)))]


def write(model: nn.Module, tokenizer, cfg: QuantConfig | None, out: Path, checkpoint_format: str = "auto") -> dict:
    """Write ``model`` (with QuantLinear layers) as a GPTQ checkpoint into the folder ``out``.

    checkpoint_format: "auto" (v1 when exact, else gptq_v2), "gptq" (v1, refuses zero points of 0)
    or "gptq_v2". Returns the quantization_config written.
    """
    if checkpoint_format not in ("auto", *CHECKPOINT_FORMATS):
        raise LowbitError(f"checkpoint format {checkpoint_format!r} is unknown: choose auto, gptq or gptq_v2")
    layers = common.quant_linears(model, FORMAT)
    weights = {name: common.from_quant_linear(layer) for name, layer in layers.items()}
    bits = _single(name_bits(weights), "bits")
    configured = cfg.group_size if cfg is not None else next(iter(layers.values())).group_size
    group_size = common.common_group_size(weights.values())
    common.check_common_group_size(group_size, configured, FORMAT)
    weights = {name: common.split_groups(w, group_size) for name, w in weights.items()}
    desc_act = not all(common.is_contiguous(w.g_idx, group_size) for w in weights.values())
    sym = all(w.is_symmetric() for w in weights.values())
    has_zero_0 = any(bool((w.zeros == 0).any()) for w in weights.values())
    if checkpoint_format == "auto":
        checkpoint_format = "gptq_v2" if has_zero_0 else "gptq"
        if has_zero_0:
            log.warning("gptq: some asymmetric zero points are 0, which GPTQ v1 cannot store; writing "
                        "checkpoint_format gptq_v2 (GPTQModel/transformers read it; vLLM only with gptq_v2 support)")
    v1 = checkpoint_format == "gptq"
    tensors = {name: to_gptq(w, v1, name) for name, w in weights.items()}
    skipped = [n for n in common.float_linears(model) if n != "lm_head" and not n.endswith(".lm_head")]
    qc = quantization_config(bits, group_size, desc_act, sym, checkpoint_format, "lm_head" in layers, cfg, skipped,
                             block_modules(model, list(layers)) if skipped else None)
    common.write_model(model, tokenizer, out, qc, tensors)
    (out / "quantize_config.json").write_text(_json(qc))  # AutoGPTQ and older vLLM read this file
    return qc


def read(folder: Path, config: dict, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of a GPTQ checkpoint folder, with QuantLinear layers, on CPU."""
    qc = config.get("quantization_config") or {}
    bits = common.config_int(qc, ("bits", "w_bit"), FORMAT)
    common.check_bits(bits, BITS, FORMAT)
    group_size = common.config_int(qc, ("group_size",), FORMAT, default=-1)
    if group_size == 0 or group_size < -1:
        raise LowbitError(f"gptq quantization_config group_size {group_size} is invalid")
    checkpoint_format = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise LowbitError(f"gptq checkpoint_format {checkpoint_format!r} is a kernel-specific layout lowbit does not "
                          f"read: supported {', '.join(CHECKPOINT_FORMATS)}")
    if str(qc.get("pack_dtype", "int32")).replace("torch.", "") != "int32":
        raise LowbitError(f"gptq pack_dtype {qc['pack_dtype']!r} is not supported: lowbit reads int32 packing")
    desc_act = bool(qc.get("desc_act", False))
    v1 = checkpoint_format == "gptq"

    def build(name: str, linear: nn.Linear, tensors: dict) -> IntWeights:
        return from_gptq(name, tensors, linear.in_features, linear.out_features, bits, group_size, v1, desc_act)

    cfg = QuantConfig(method=common.source_method(folder, "gptq"), bits=bits, group_size=group_size,
                      sym=bool(qc.get("sym", True)), act_order=desc_act, quantize_lm_head=bool(qc.get("lm_head", False)),
                      format=FORMAT)
    return common.read_model(folder, dtype, "qweight", build, cfg, lambda name: group_size)


def name_bits(weights: dict[str, IntWeights]) -> set[int]:
    return {w.bits for w in weights.values()}


def _single(values: set, what: str):
    if len(values) != 1:
        raise LowbitError(f"layers use different {what} {sorted(values)}: one checkpoint holds one setting")
    return next(iter(values))


def _json(d: dict) -> str:
    import json

    return json.dumps(d, indent=2) + "\n"
