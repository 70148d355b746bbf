"""device_map: which device each part of a model lives and runs on.

Accepted forms (as in transformers / accelerate):
    "auto"                 every CUDA GPU in order while the (quantized) weights fit, then "cpu";
                           "cpu" when there is no GPU
    "cpu", "cuda", "cuda:1", 0, torch.device(...)   the whole model there
    {"model.embed_tokens": 0, "model.layers.0": "cuda:0", ..., "lm_head": "cpu"}
                           module name -> device; "" names the whole model; a module goes
                           where its longest named ancestor goes
A layer placed on "cpu" runs on the CPU (inputs are moved to it by a forward pre-hook,
outputs move on to the next module's device): lowbit's kernels run everywhere, so this is
real CPU execution, not accelerate's "offload to CPU, run on GPU".
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import LowbitError

log = logging.getLogger(__name__)

DeviceMap = "str | int | torch.device | dict[str, str | int | torch.device] | None"
#: Fraction of a GPU's free memory "auto" fills, leaving room for activations.
AUTO_GPU_FRACTION = 0.85


def normalize_device(d: object, what: str = "device_map") -> str:
    """'cpu' | 'cuda:i' | other torch device strings; refuses devices that are not there."""
    if isinstance(d, bool):
        raise LowbitError(f"{what}: {d!r} is not a device")
    if isinstance(d, int):
        d = f"cuda:{d}"
    name = str(d)
    if name == "disk":
        raise LowbitError(f"{what}: 'disk' offload is not supported by lowbit: place the layers on 'cpu' instead")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LowbitError(f"{what}: {d!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or a GPU index") from None
    if dev.type == "cuda":
        index = dev.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise LowbitError(f"{what}: device {name} is not available on this machine: use 'cpu' or 'auto'")
        return f"cuda:{index}"
    return str(dev)


def owner(name: str, placement: dict[str, str]) -> str | None:
    """The key of ``placement`` that governs module or tensor ``name`` (longest dotted prefix)."""
    best = None
    for key in placement:
        if key == "" or name == key or name.startswith(key + "."):
            if best is None or len(key) > len(best):
                best = key
    return best


def device_of(name: str, placement: dict[str, str]) -> str:
    key = owner(name, placement)
    if key is None:  # resolve() guarantees coverage; this guards programming errors
        raise LowbitError(f"device_map does not place '{name}'")
    return placement[key]


def resolve(model: nn.Module, device_map: object, size_of: Callable[[str], int] | None = None) -> dict[str, str]:
    """Validate ``device_map`` against the model and return {module name: device}.

    size_of(module_name) -> bytes the module will take (for "auto"); defaults to its
    current tensor sizes.
    """
    if device_map is None:
        device_map = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, str) and device_map == "auto":
        return auto_map(model, size_of or (lambda n: _module_bytes(model.get_submodule(n))))
    if not isinstance(device_map, dict):
        return {"": normalize_device(device_map)}
    modules = dict(model.named_modules())
    placement = {}
    for key, dev in device_map.items():
        if not isinstance(key, str) or (key and key not in modules):
            close = [n for n in modules if n and isinstance(key, str) and key.split(".")[-1] in n.split(".")][:3]
            hint = f" (close: {', '.join(close)})" if close else f" (top-level: {', '.join(n for n, _ in model.named_children())})"
            raise LowbitError(f"device_map names '{key}', which is not a module of this model{hint}: fix the name")
        placement[key] = normalize_device(dev, f"device_map['{key}']")
    for name in _tensor_names(model):
        if owner(name, placement) is None:
            raise LowbitError(
                f"device_map does not place '{name}': add its module (or \"\" for everything else) to the map"
            )
    return placement


def _tensor_names(model: nn.Module) -> Iterable[str]:
    for name, _ in model.named_parameters(remove_duplicate=False):
        yield name
    for name, _ in model.named_buffers(remove_duplicate=False):
        yield name


def _module_bytes(module: nn.Module) -> int:
    seen = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def split_units(model: nn.Module) -> list[str]:
    """Names of the modules "auto" places whole: decoder blocks (transformers'
    ``_no_split_modules`` classes) and every other module that holds tensors directly."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    units: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(u + ".") for u in units if u):
            continue
        direct = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if type(module).__name__ in no_split or (direct and name):
            units.append(name)
    return units


def auto_map(model: nn.Module, size_of: Callable[[str], int]) -> dict[str, str]:
    """Fill GPUs in order (AUTO_GPU_FRACTION of free memory each), the rest on "cpu"."""
    if not torch.cuda.is_available():
        return {"": "cpu"}
    units = split_units(model)
    sizes = {u: size_of(u) for u in units}
    free = [torch.cuda.mem_get_info(i)[0] * AUTO_GPU_FRACTION for i in range(torch.cuda.device_count())]
    if sum(sizes.values()) <= free[0]:
        return {"": "cuda:0"}
    placement: dict[str, str] = {}
    gpu, used = 0, 0
    for u in units:
        while gpu < len(free) and used + sizes[u] > free[gpu]:
            gpu, used = gpu + 1, 0
        if gpu < len(free):
            placement[u] = f"cuda:{gpu}"
            used += sizes[u]
        else:
            placement[u] = "cpu"
    log.info("device_map auto: %s", {d: sum(1 for v in placement.values() if v == d) for d in set(placement.values())})
    return placement


def _move(obj: object, device: torch.device, float_dtype: torch.dtype | None) -> object:
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device)
        if float_dtype is not None and obj.is_floating_point():
            obj = obj.to(float_dtype)
        return obj
    if isinstance(obj, tuple):
        return tuple(_move(o, device, float_dtype) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device, float_dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _move(v, device, float_dtype) for k, v in obj.items()}
    return obj


def attach_hooks(model: nn.Module, placement: dict[str, str], fp32_modules: set[str], model_dtype: torch.dtype) -> list:
    """Forward hooks so a model spread over devices runs: each placed module gets its inputs
    on its own device; modules kept in float32 (CPU offload) get float32 inputs and hand
    ``model_dtype`` outputs on. Returns the hook handles."""
    handles = []
    for key, dev in placement.items():
        if key == "" and not fp32_modules:
            continue
        module = model.get_submodule(key) if key else model
        device = torch.device(dev)
        upcast = torch.float32 if key in fp32_modules else None

        def pre(mod, args, kwargs, device=device, upcast=upcast):
            return _move(args, device, upcast), _move(kwargs, device, upcast)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if upcast is not None and model_dtype != torch.float32:
            def post(mod, args, output):
                return _move(output, next(iter(_devices(output)), device), model_dtype)

            handles.append(module.register_forward_hook(post))
    return handles


def _devices(obj: object) -> Iterable[torch.device]:
    if isinstance(obj, torch.Tensor):
        yield obj.device
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _devices(o)


__all__ = ["attach_hooks", "auto_map", "device_of", "normalize_device", "owner", "resolve", "split_units"]
