"""bitsandbytes-style quantization of a float model: in memory (``quantize_model_bnb``, for
``lowbit quantize``) or while loading (``load_on_the_fly``, for ``lowbit.load(...,
load_in_4bit=True)``).

Loading builds the model skeleton on the meta device and reads the float checkpoint one
tensor at a time from its safetensors files (``safe_open``): each Linear is quantized as
soon as its weight is read, so peak memory stays near the quantized size plus one layer.
Sources without safetensors (GGUF, .bin, hub ids) are loaded in float first, then converted.

Which Linear layers are quantized: all of them except the output layer (lm_head, kept in
16 bit as transformers does; with QuantConfig.quantize_lm_head an untied one is quantized),
layers matching a skip name, and, with llm_int8_enable_fp32_cpu_offload, layers placed on
"cpu". A skip name matches a layer when its dotted parts appear in a row in the layer's
name: "lm_head", "mlp.down_proj", "model.layers.0" (every layer of block 0).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..algorithms.bnb import BNB_ALGORITHMS
from ..config import BnbConfig, QuantConfig
from ..errors import LowbitError
from ..nn import Linear4bit, Linear8bitLt
from . import checkpoint, device_map as dm, hf
from .load import load_float, parse_dtype, resolve_source

log = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


def matches(name: str, pattern: str) -> bool:
    """True when the dotted parts of ``pattern`` appear consecutively in ``name``."""
    parts, pat = name.split("."), pattern.split(".")
    return any(parts[i:i + len(pat)] == pat for i in range(len(parts) - len(pat) + 1))


def output_layer_names(model: nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def is_tied(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "tie_word_embeddings", False))


def select_linears(model: nn.Module, cfg: QuantConfig, exclude: set[str] = frozenset()) -> list[str]:
    """Names of the Linear layers to quantize; warns about skip names that match no layer."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    heads = output_layer_names(model)
    unused = [p for p in cfg.modules_to_not_convert if not any(matches(n, p) for n in linears)]
    if unused:
        log.warning("skip module name(s) %s match no Linear layer of this model; nothing skipped for them",
                    ", ".join(repr(p) for p in unused))
    chosen = []
    for name in linears:
        if name in exclude or any(matches(name, p) for p in cfg.modules_to_not_convert):
            continue
        if name in heads and not (cfg.quantize_lm_head and not is_tied(model)):
            continue
        in_features = model.get_submodule(name).in_features
        if cfg.method != "int8" and in_features % 2:
            log.warning("layer %s has an odd in_features (%d): kept in float (4-bit packs two a byte)", name, in_features)
            continue
        chosen.append(name)
    return chosen


def runnable_dtype(dtype: torch.dtype, device: str) -> torch.dtype:
    """``dtype`` if a matmul in it runs on ``device``, else float32 with a warning (decision:
    degrade with a warning rather than fail, since the result is the same or better)."""
    try:
        a = torch.ones(2, 2, dtype=dtype, device=device)
        (a @ a).sum().item()
        return dtype
    except (RuntimeError, TypeError) as e:
        log.warning("compute dtype %s cannot run matmuls on %s (%s): computing in float32 there",
                    str(dtype).replace("torch.", ""), device, str(e).splitlines()[0])
        return torch.float32


def quantize_weight(name: str, weight: torch.Tensor, bias: torch.Tensor | None, cfg: QuantConfig,
                    compute_dtype: torch.dtype) -> tuple[nn.Module, dict]:
    """One float weight [N, K] (+ bias) -> (Linear4bit | Linear8bitLt, report record)."""
    if not torch.isfinite(weight).all():
        raise LowbitError(f"layer {name} has NaN or Inf weights: the model is corrupt; re-export it")
    start = time.perf_counter()
    result = BNB_ALGORITHMS[cfg.method](weight, None, cfg)
    if cfg.method == "int8":
        layer = Linear8bitLt.from_quantized(result.weight.q, result.weight.scale, bias, cfg.int8_threshold,
                                            compute_dtype, cfg.int8_act_block_size)
    else:
        layer = Linear4bit.from_quantized(result.weight, bias, compute_dtype)
    w = weight.float()
    rel = (result.loss * w.numel()) ** 0.5 / w.norm().clamp_min(1e-12).item()
    record = {"layer": name, "shape": list(weight.shape), "loss": result.loss, "rel_weight_error": rel,
              "seconds": round(time.perf_counter() - start, 4)}
    return layer, record


def quantize_model_bnb(model: nn.Module, cfg: QuantConfig, progress: bool = True) -> list[dict]:
    """Swap NF4/FP4/int8 layers into a float model in place (where its Linears are)."""
    compute = torch_dtype(cfg.compute_dtype)
    records = []
    for name in tqdm(select_linears(model, cfg), desc=f"{cfg.method}", unit="layer", disable=not progress):
        linear = model.get_submodule(name)
        layer, record = quantize_weight(name, linear.weight.data, linear.bias, cfg, runnable_dtype(compute, str(linear.weight.device)))
        checkpoint.set_module(model, name, layer)
        records.append(record)
    return records


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class SafetensorsReader:
    """Tensors of a folder's safetensors files by name, read one at a time.

    Reads each tensor's bytes with ``readinto`` into a fresh tensor instead of memory-mapping
    the file: mapped file pages count in the process's resident memory as they are touched,
    so an mmap reader would show the whole float checkpoint in RSS while loading.
    Format: 8-byte little-endian header length, JSON header {name: {dtype, shape,
    data_offsets: [begin, end]}}, then the data (offsets relative to its start).
    """

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [p.name for p in sorted(folder.glob("*.safetensors"))]
        self.entries: dict[str, tuple[Path, int, torch.dtype, list[int], int]] = {}
        for f in files:
            self._read_header(folder / f)

    def _read_header(self, path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            start = 8 + n
            size = path.stat().st_size
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                b, end = e["data_offsets"]
                dtype = _ST_DTYPES[e["dtype"]]
                if start + end > size or end - b != math.prod(e["shape"]) * dtype.itemsize:
                    raise ValueError(f"tensor {name} runs past the end of the file or has a wrong size")
                self.entries[name] = (path, start + b, dtype, list(e["shape"]), end - b)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LowbitError(f"{path} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                              "re-create or re-download the checkpoint") from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> torch.Tensor:
        path, offset, dtype, shape, nbytes = self.entries[name]
        buf = torch.empty(nbytes, dtype=torch.uint8)
        with open(path, "rb") as fh:
            fh.seek(offset)
            if fh.readinto(memoryview(buf.numpy())) != nbytes:
                raise LowbitError(f"{path} is truncated (tensor {name}): re-create or re-download the checkpoint")
        return buf.view(dtype).reshape(shape)


class ModelReader:
    """The same interface over a model already in memory (sources without safetensors)."""

    def __init__(self, model: nn.Module):
        self.state = dict(model.state_dict(keep_vars=True))

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def get(self, name: str) -> torch.Tensor:
        return self.state[name].detach()


def _skeleton(folder: Path, dtype: torch.dtype) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _lazy_source(src: str | Path, dtype: torch.dtype) -> tuple[nn.Module, object, object]:
    """(model, tokenizer, reader): a meta skeleton + safetensors reader when possible."""
    kind, where = resolve_source(src)
    if kind in ("folder", "demo"):
        config = checkpoint.read_config(where)
        if "quantization_config" in config:
            raise LowbitError(
                f"{where} is already quantized ({config['quantization_config'].get('quant_method', '?')}): "
                "load it with lowbit.load(path) alone, without on-the-fly quantization or device_map"
            )
        if any(Path(where).glob("*.safetensors")):
            model = _skeleton(Path(where), dtype)
            reader = SafetensorsReader(Path(where))
            missing = [n for n in model.state_dict() if n not in reader and not _tied_name(model, n)]
            if not missing:
                return model, hf.load_tokenizer(where), reader
            log.info("%s: tensor names differ from the model's (e.g. %s); loading in float first", where, missing[0])
    model, tokenizer = load_float(src, dtype)
    return model, tokenizer, ModelReader(model)


def _tied_name(model: nn.Module, name: str) -> bool:
    return is_tied(model) and any(name == h + ".weight" for h in output_layer_names(model))


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if is_param:
        mod._parameters[attr] = nn.Parameter(value, requires_grad=value.is_floating_point())
    else:
        mod._buffers[attr] = value


def load_on_the_fly(
    src: str | Path,
    bnb: BnbConfig | None,
    device_map: object = None,
    dtype: "str | torch.dtype | None" = None,
    progress: bool = False,
) -> nn.Module:
    """The model at ``src``, quantized per ``bnb`` (None: float) while it is read, placed
    per ``device_map``. Float parts in ``dtype`` (default: float16 when the map uses a GPU,
    else float32); layers on "cpu" with llm_int8_enable_fp32_cpu_offload in float32."""
    dtype = parse_dtype(dtype)
    uses_gpu = _map_uses_gpu(device_map)
    dtype = dtype or (torch.float16 if uses_gpu else torch.float32)
    model, tokenizer, reader = _lazy_source(src, dtype)
    cfg = bnb.to_quant_config() if bnb is not None else None
    placement, fp32_keys, targets = plan(model, bnb, device_map)
    in_fp32 = lambda n: dm.owner(n, placement) in fp32_keys  # noqa: E731
    if fp32_keys and fp32_keys == set(placement):  # all of it offloaded: one fp32 model, no casts
        dtype, fp32_keys = torch.float32, set()
    records = _materialize(model, reader, cfg, targets, placement, dtype, in_fp32, progress)
    if is_tied(model):
        model.tie_weights()
    still_meta = [n for n, t in model.state_dict().items() if t.device.type == "meta"]
    if still_meta:
        raise LowbitError(f"{src}: tensor '{still_meta[0]}' was not found in the checkpoint")
    if len(set(placement.values())) > 1 or fp32_keys:
        model._lowbit_hooks = dm.attach_hooks(model, placement, fp32_keys, dtype)
    model.hf_device_map = dict(placement)
    if cfg is not None:
        model.quant_config = cfg
        model.quantization_records = records
    model.tokenizer = tokenizer
    return model.eval()


def plan(model: nn.Module, bnb: BnbConfig | None, device_map: object) -> tuple[dict[str, str], set[str], list[str]]:
    """(placement {module: device}, keys kept in float32 on the CPU, Linear names to quantize).

    With llm_int8_enable_fp32_cpu_offload, every device_map entry placed on "cpu" stays
    unquantized in float32 (transformers' meaning of the flag)."""
    cfg = bnb.to_quant_config() if bnb is not None else None
    placement = dm.resolve(model, device_map, _size_estimator(model, cfg))
    offload = bool(bnb and bnb.llm_int8_enable_fp32_cpu_offload)
    fp32_keys = {k for k, d in placement.items() if d == "cpu"} if offload else set()
    kept = {n for n, _ in model.named_modules() if dm.owner(n, placement) in fp32_keys}
    targets = [] if cfg is None else select_linears(model, cfg, kept)
    if offload and cfg is not None and not targets:
        log.warning("llm_int8_enable_fp32_cpu_offload keeps every layer placed on 'cpu' in float32: "
                    "with this device_map nothing is quantized")
    return placement, fp32_keys, targets


def _map_uses_gpu(device_map: object) -> bool:
    if device_map == "auto" or device_map is None:
        return torch.cuda.is_available()
    values = device_map.values() if isinstance(device_map, dict) else [device_map]
    return any(isinstance(v, int) and not isinstance(v, bool) or str(v).startswith("cuda") for v in values)


def _size_estimator(model: nn.Module, cfg: QuantConfig | None) -> Callable[[str], int]:
    bits = None if cfg is None else cfg.bits + (0.5 if cfg.method != "int8" else 0)  # + absmax
    def size_of(name: str) -> int:
        total = 0
        for n, m in model.get_submodule(name).named_modules():
            for p in m.parameters(recurse=False):
                quantized = bits is not None and isinstance(m, nn.Linear) and p is m.weight
                total += int(p.numel() * bits / 8) if quantized else p.numel() * p.element_size()
        return total
    return size_of


@functools.lru_cache(maxsize=1)
def _libc_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``). Without it, the float
    temporaries of each layer stay in the process's heap and peak RSS grows well past the
    quantized model's size; with it, loading peaks near (quantized size + one layer)."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def _materialize(model, reader, cfg, targets, placement, dtype, in_fp32, progress) -> list[dict]:
    """Fill every meta tensor: quantize target Linears, read the rest, put each on its device."""
    targets = set(targets)
    records = []
    compute = {}
    named = [(n, m) for n, m in model.named_modules() if n in targets or
             any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]
    for name, module in tqdm(named, desc="loading" if cfg is None else f"loading as {cfg.method}", unit="module",
                             disable=not progress):
        device = dm.device_of(name, placement)
        prefix = name + "." if name else ""
        if name in targets:
            w = reader.get(prefix + "weight")
            b = reader.get(prefix + "bias") if module.bias is not None else None
            if device not in compute:
                compute[device] = runnable_dtype(torch_dtype(cfg.compute_dtype), device)
            layer, record = quantize_weight(name, w.to(device), None if b is None else b.to(device, dtype),
                                            cfg, compute[device])
            checkpoint.set_module(model, name, layer)
            records.append(record)
            del w, b
            release_freed_memory()
            continue
        float_dtype = torch.float32 if in_fp32(name) else dtype
        for attr, t in list(module._parameters.items()):
            if t is None:
                continue
            full = prefix + attr
            if full in reader:
                v = reader.get(full)
            elif _tied_name(model, full):
                continue  # tied to the input embedding: re-tied after loading
            else:
                raise LowbitError(f"tensor '{full}' is missing from the checkpoint: it is incomplete")
            _set_tensor(model, full, v.to(device, float_dtype if v.is_floating_point() else v.dtype), True)
        for attr, t in list(module._buffers.items()):
            if t is None:
                continue
            full = prefix + attr
            v = reader.get(full) if full in reader else t
            if v.device.type == "meta":
                raise LowbitError(f"buffer '{full}' is missing from the checkpoint: it is incomplete")
            _set_tensor(model, full, v.to(device, float_dtype if v.is_floating_point() and full in reader else v.dtype), False)
    return records


__all__ = ["load_on_the_fly", "matches", "plan", "quantize_model_bnb", "quantize_weight", "runnable_dtype", "select_linears"]
