"""``lowbit serve MODEL --engine vllm``: the ``vllm serve`` command for a checkpoint.

vLLM reads ``quantization_config`` from config.json itself, but the method named on its
command line decides the kernel: naming ``gptq`` for a checkpoint that the Marlin kernel can
run forces the slower GPTQ kernel, so we name the fastest method vLLM accepts for the format.
Marlin kernels need compute capability 8.0 (Ampere) or newer; on an older GPU we name the
plain method.
"""
from __future__ import annotations

import importlib.util
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from ..errors import LowbitError

log = logging.getLogger(__name__)

MARLIN_GROUP_SIZES = (-1, 32, 64, 128)
MARLIN_MIN_CAPABILITY = (8, 0)


def _gptq(qc: dict, marlin_ok: bool) -> str:
    # vLLM's GPTQ Marlin kernel takes symmetric 4/8-bit weights, group sizes -1/32/64/128, and
    # needs desc_act present in the config (act order or not, both run).
    fits = (qc.get("bits") in (4, 8) and qc.get("sym") is True and qc.get("group_size") in MARLIN_GROUP_SIZES
            and qc.get("desc_act") is not None)
    if not fits and qc.get("checkpoint_format") == "gptq_v2" and qc.get("sym") is False:
        # Symmetric weights ignore stored zeros, so v1/v2 only matters here; older vLLM read v2 as v1.
        log.warning("asymmetric GPTQ v2 checkpoint: needs a vLLM release with GPTQ v2 support (late 2025); "
                    "for older ones write v1 with `lowbit export SRC --format gptq --checkpoint-format gptq`")
    return "gptq_marlin" if fits and marlin_ok else "gptq"


def _awq(qc: dict, marlin_ok: bool) -> str:
    if str(qc.get("version", "gemm")).lower() != "gemm":
        raise LowbitError(f"vLLM loads AWQ checkpoints in the GEMM layout only, this one is "
                          f"'{qc.get('version')}': convert it with `lowbit export MODEL --format awq`")
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size"))
    fits = bits in (4, 8) and group in MARLIN_GROUP_SIZES and qc.get("zero_point") is not None
    return "awq_marlin" if fits and marlin_ok else "awq"


def _lowbit(qc: dict, marlin_ok: bool) -> str:
    raise LowbitError(
        "vLLM cannot load lowbit's own checkpoint layout (quant_method 'lowbit'): write a GPTQ checkpoint "
        "with `lowbit export MODEL --format gptq --output-dir OUT` (or quantize with `--format gptq`) and "
        "serve that, or serve this one with `--engine lowbit`")


#: config.json quantization_config.quant_method -> the --quantization vLLM should get.
QUANTIZATION: dict[str, Callable[[dict, bool], str]] = {
    "gptq": _gptq,
    "awq": _awq,
    "compressed-tensors": lambda qc, m: "compressed-tensors",
    "bitsandbytes": lambda qc, m: "bitsandbytes",
    "fp8": lambda qc, m: "fp8",
    "lowbit": _lowbit,
}


def marlin_supported() -> bool:
    """False only when a visible GPU is too old for Marlin; True when none is visible (the
    command is printed for the GPU machine, which is most likely recent)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_capability() >= MARLIN_MIN_CAPABILITY
    except Exception as e:  # a broken CUDA setup: let vLLM report it, pick the portable kernel
        log.warning("could not read the GPU's compute capability (%s); using the non-Marlin kernel", e)
        return False
    return True


def quantization_for(config: dict, marlin_ok: bool = True) -> str | None:
    """The --quantization value for a checkpoint's config.json (None: not quantized)."""
    qc = config.get("quantization_config")
    if qc is None:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method not in QUANTIZATION:
        raise LowbitError(f"quantization_config has quant_method '{method}', which lowbit does not know how to "
                          f"serve with vLLM (known: {', '.join(QUANTIZATION)}); run `vllm serve` yourself")
    return QUANTIZATION[method](qc, marlin_ok)


def vllm_command(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 max_batch_size: int | None = None, served_model_name: str | None = None,
                 marlin_ok: bool | None = None) -> list[str]:
    """The exact ``vllm serve`` argv for a checkpoint folder (or hub id, passed on as is)."""
    from ..models.checkpoint import read_config
    from ..models.load import resolve_source

    kind, where = resolve_source(model)
    if kind == "gguf":
        raise LowbitError("vLLM's GGUF support needs the original tokenizer and is experimental: convert the "
                          "model to a checkpoint folder first (lowbit quantize ... --format gptq)")
    quantization = None
    if kind in ("folder", "demo"):
        marlin_ok = marlin_supported() if marlin_ok is None else marlin_ok
        quantization = quantization_for(read_config(where), marlin_ok)
        where = Path(where).resolve()
    cmd = ["vllm", "serve", str(where), "--host", host, "--port", str(port)]
    if quantization:
        cmd += ["--quantization", quantization]
    if tensor_parallel_size != 1:
        cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    if max_batch_size:
        cmd += ["--max-num-seqs", str(max_batch_size)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    if api_key:
        cmd += ["--api-key", api_key]
    return cmd


def vllm_installed() -> bool:
    return shutil.which("vllm") is not None or importlib.util.find_spec("vllm") is not None


def launch(cmd: list[str]) -> int:
    """Run the command when vLLM is installed (returns its exit code); else print it and return 1."""
    if not vllm_installed():
        print(shlex.join(cmd))
        print("vLLM is not installed here, so the command above was not run: install it on a machine with a "
              "CUDA GPU (pip install vllm) and run the command there, or serve on this machine with "
              "--engine lowbit", file=sys.stderr)
        return 1
    if shutil.which("vllm") is None:  # installed as a module without the console script
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", *cmd[1:]]
    log.info("running: %s", shlex.join(cmd))
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 130
