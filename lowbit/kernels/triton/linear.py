"""Dispatch entries ``(x, layer) -> y | None`` for QuantLinear ("int_group") and Linear4bit
("nf4"): guards, the cached repacked weight, and the choice of kernel and config.

Each guard returns the reason it refuses; dispatch then falls back to the reference kernel
and the reason is logged once per distinct message.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import triton
from triton.compiler.errors import CompilationError

from . import configs, fused, launch
from .layout import PackedWeight, Unsupported, repack_int_group, repack_nf4

log = logging.getLogger(__name__)
_logged: set[str] = set()

#: Activation dtypes the kernels take: the tensor-core dot needs 16-bit floats, and the
#: weight slabs are cast to the activation dtype.
DTYPES = (torch.float16, torch.bfloat16)
_CACHE_ATTR = "_lowbit_triton"


def _refuse(kind: str, layer: torch.nn.Module, why: str) -> None:
    msg = f"{kind} {layer.in_features}->{layer.out_features}: {why}; using the reference kernel"
    if msg not in _logged:
        _logged.add(msg)
        log.info(msg)
    return None


def input_problem(x: torch.Tensor, k: int, weight: torch.Tensor) -> str | None:
    """Why the kernels cannot take this activation tensor, or None."""
    if x.dtype not in DTYPES:
        return f"input dtype {x.dtype} (the kernels take float16/bfloat16)"
    if x.dim() == 0 or x.shape[-1] != k:
        return f"input shape {tuple(x.shape)} does not end in in_features={k}"
    if x.numel() == 0:
        return "empty input"
    if not x.is_contiguous():
        # A strided row walk would defeat the vector loads; the reference handles any stride.
        return "non-contiguous input"
    if not x.is_cuda:
        return "the input is not on a CUDA device (the Triton kernels run on CUDA only)"
    if x.device != weight.device:
        return f"input on {x.device} but weights on {weight.device}"
    return None


@dataclass
class _Cached:
    key: tuple
    packed: PackedWeight | None
    why: str | None


def _prepared(layer: torch.nn.Module, key: tuple, build) -> tuple[PackedWeight | None, str | None]:
    """The layer's repacked weight, built once per version of its buffers."""
    cached = layer.__dict__.get(_CACHE_ATTR)
    if cached is None or cached.key != key:
        try:
            cached = _Cached(key, build(), None)
        except Unsupported as e:
            cached = _Cached(key, None, str(e))
        layer.__dict__[_CACHE_ATTR] = cached  # a plain attribute: never in the state_dict
    return cached.packed, cached.why


def _buffers_key(*tensors: torch.Tensor) -> tuple:
    # data_ptr changes when a buffer is replaced (load_state_dict(assign=True), .to());
    # _version when it is written in place.
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors if t is not None)


def prepare_int_group(layer: torch.nn.Module) -> PackedWeight | None:
    """Repack a QuantLinear now (else on its first CUDA call); None if unsupported."""
    key = _buffers_key(layer.qweight, layer.qzeros, layer.scales, layer.g_idx)
    n, k = layer.out_features, layer.in_features
    return _prepared(layer, key, lambda: repack_int_group(
        layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits, layer.group_size,
        configs.block_n(n, k, layer.bits)))[0]


def prepare_nf4(layer: torch.nn.Module) -> PackedWeight | None:
    """Repack a Linear4bit now (double-quantized absmax undone once, here)."""
    key = _buffers_key(layer.weight_4bit, layer.absmax, getattr(layer, "nested_absmax", None))
    n, k = layer.out_features, layer.in_features
    return _prepared(layer, key, lambda: repack_nf4(
        layer.weight_4bit, layer.absmax_float(), layer.code, n, k, layer.blocksize, configs.block_n(n, k, 4)))[0]


def _try_gluon(kernel: str, run, disable, rows: str) -> torch.Tensor | None:
    """``run()`` (a Gluon kernel's launch), or None - and that kernel never again in this
    process - if this Triton cannot compile it: Gluon is an experimental API, and another
    Triton release may reject a kernel."""
    try:
        return run()
    except CompilationError as e:
        disable()
        why = (e.error_message or type(e).__name__).splitlines()[-1][:200]
        log.warning("the Gluon %s kernel does not compile with triton %s (%s); %s runs the other kernels", kernel,
                    triton.__version__, why, rows)
        return None


def _try_mma16(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor | None:
    cfg = configs.mma16_config(pw.n, pw.k, pw.qweight.shape[0], pw.chunks, x2.device)
    return _try_gluon("mma16", lambda: launch.mma16(x2, pw, bias, cfg), launch.disable_mma16,
                      f"M = 2..{configs.MMA16_MAX_M}")


def _try_wgmma(x2: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor | None:
    cfg = configs.wgmma_config(x2.shape[0], pw.n, pw.k, x2.device, pw.mode == "lut")
    return _try_gluon("wgmma", lambda: launch.wgmma(x2, pw, bias, cfg), launch.disable_wgmma,
                      f"M = {configs.WGMMA_MIN_M}..{configs.WGMMA_MAX_M}")


def run_packed(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """y [..., N] = x [..., K] @ W.T + bias with the kernel and config for this M."""
    x2 = x.reshape(-1, pw.k)
    m = x2.shape[0]
    if m <= configs.GEMV_MAX_M and launch.half2_ok(x2, pw):
        cfg = configs.half2_config(pw.n, pw.k, pw.qweight.shape[0], pw.chunks, x.device, pw.mode == "lut")
        y = launch.gemv_half2(x2, pw, bias, cfg)
    elif (configs.prefers_wgmma(m, pw.n, pw.k) and launch.wgmma_ok(x2, pw)
          and (y := _try_wgmma(x2, pw, bias)) is not None):
        pass
    elif launch.mma16_ok(x2, pw, configs.MMA16_MAX_M) and (y := _try_mma16(x2, pw, bias)) is not None:
        pass
    elif m <= configs.GEMV_MAX_M:
        cfg = configs.gemv_config(pw.n, pw.k, pw.bits, pw.qweight.shape[0], pw.chunks, x.device, pw.mode == "lut")
        y = launch.gemv(x2, pw, bias, cfg)
    else:
        cfg = configs.gemm_config(m, pw.n, pw.k, pw.bits, pw.chunks, x.device, pw.mode == "lut", pw.group_size)
        if isinstance(cfg, launch.DequantConfig):
            y = launch.dequant_matmul(x2, pw, bias, cfg)
        elif isinstance(cfg, launch.TcConfig):
            y = launch.gemm_tc(x2, pw, bias, configs.fit_shared_tc(cfg, pw.mode == "lut"))
        else:
            if pw.mode == "lut":
                # The code-book gathers would be software-pipelined through shared memory
                # too (8 slabs a stage): more than a block has. Unpipelined, they fit.
                cfg = replace(cfg, num_stages=1)
            y = launch.gemm(x2, pw, bias, cfg)
    return y.view(*x.shape[:-1], pw.n)


def _int_group_packed(x: torch.Tensor, layer: torch.nn.Module) -> PackedWeight | None:
    """The QuantLinear's repacked weight if the kernels take x for it, else None (logged)."""
    why = input_problem(x, layer.in_features, layer.qweight)
    if why is None and layer.qweight.device.type == "meta":
        why = "weights are still on the meta device"
    if why is None:
        prepare_int_group(layer)
        why = layer.__dict__[_CACHE_ATTR].why
    if why is not None:
        return _refuse("QuantLinear", layer, why)
    return layer.__dict__[_CACHE_ATTR].packed


def int_group(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor | None:
    """Fast path for QuantLinear (op "int_group")."""
    pw = _int_group_packed(x, layer)
    return None if pw is None else run_packed(x, pw, layer.bias)


def int_group_silu(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor | None:
    """Fast path for op "int_group_silu": silu(gate) * up from a QuantLinear whose output
    columns interleave gate and up. One activation row: the f16x2 GEMV does the product in
    its epilogue; more rows: the layer's kernel, then one small kernel for the product."""
    pw = _int_group_packed(x, layer)
    if pw is None:
        return None
    x2 = x.reshape(-1, pw.k)
    if x2.shape[0] <= configs.GEMV_MAX_M and launch.half2_ok(x2, pw) and layer.bias is None and pw.block_n % 2 == 0:
        cfg = configs.half2_config(pw.n, pw.k, pw.qweight.shape[0], pw.chunks, x.device)
        return launch.gemv_half2(x2, pw, None, cfg, silu=True).view(*x.shape[:-1], pw.n // 2)
    return fused.silu_mul(run_packed(x, pw, layer.bias), interleaved=True)


def nf4(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor | None:
    """Fast path for Linear4bit (op "nf4", NF4 and FP4 code books)."""
    why = input_problem(x, layer.in_features, layer.weight_4bit)
    if why is None and layer.compute_dtype not in DTYPES + (torch.float32,):
        why = f"compute dtype {layer.compute_dtype}"
    if why is None:
        prepare_nf4(layer)
        why = layer.__dict__[_CACHE_ATTR].why
    if why is not None:
        return _refuse("Linear4bit", layer, why)
    return run_packed(x, layer.__dict__[_CACHE_ATTR].packed, layer.bias)
