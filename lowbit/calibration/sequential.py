"""The sequential runner: calibrate a model block by block, one decoder block on the device.

    acts = capture(model, blocks, input_ids, batch_size, device)   # inputs of block 0
    for i, block in enumerate(blocks):
        block.to(device)
        runner = BlockRunner(block, i, acts, compute_dtype)
        quantize_block(i, block, runner)     # runner.collect(names) -> input statistics;
                                             # swaps quantized layers into the block
        acts.hidden = runner.outputs()       # the quantized block's outputs feed the next
        block.to(home)

Peak accelerator memory: one block, the calibration activations (inputs and outputs of a
block, [N, L, hidden] each) and one batch's intermediates.

``capture`` (in ``capture.py``) records what block 0 receives.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import LowbitError
from ..models.registry import get_blocks
from .capture import Activations, StopForward, capture

log = logging.getLogger(__name__)

#: Tokens per calibration forward batch: big enough for efficient matmuls, small enough
#: that one batch's MLP intermediates stay well below the activations themselves.
BATCH_TOKENS = {"cpu": 8192, "cuda": 16384}

OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)


def resolve_device(device: "str | torch.device | None") -> torch.device:
    """None -> cuda when available, else cpu; a CUDA device that is not there is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LowbitError(f"--device {device} is not a device: use cuda, cuda:N or cpu") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LowbitError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return dev


def resolve_compute_dtype(model_dtype: torch.dtype, device: torch.device, dtype="auto") -> torch.dtype:
    """The dtype of the calibration forward passes (autocast when it differs from the
    model's). GPUs: 16-bit models as they are, float32 ones in bfloat16 (float16 without
    bf16 support). CPUs: bfloat16 where it is fast (AVX512-BF16/AMX: 2-3x the float32 speed)
    and for float16 models (CPUs have no fast float16 matmul), float32 otherwise. Statistics
    are accumulated in float32 always."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        if model_dtype in (torch.float16, torch.bfloat16):
            return model_dtype
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if model_dtype in (torch.float16, torch.bfloat16) or fast_bf16:
        return torch.bfloat16
    return torch.float32


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj

class BlockRunner:
    """Forward passes of one block (on the device) over the calibration batches."""

    def __init__(self, block: nn.Module, index: int, acts: Activations, compute_dtype: torch.dtype):
        self.block = block
        self.index = index
        self.acts = acts
        self.device = acts.hidden[0].device
        model_dtype = next(block.parameters()).dtype
        self.autocast = (torch.autocast(self.device.type, dtype=compute_dtype)
                         if compute_dtype != model_dtype else contextlib.nullcontext())
        self.frozen: dict[str, dict[int, object]] = {}  # submodule -> {batch: recorded output}
        # submodule -> (its last Linear, {batch: recorded input of that Linear})
        self.tails: dict[str, tuple[str, dict[int, torch.Tensor]]] = {}

    def freeze(self, child: str) -> None:
        """The output of submodule ``child`` (e.g. ``self_attn`` once q, k, v, o are quantized)
        no longer changes: the next pass that computes it records it per batch and later
        passes replay it instead of recomputing it."""
        self.frozen.setdefault(child, {})

    def freeze_tail(self, child: str, linear: str) -> None:
        """Everything in submodule ``child`` before its last op, the Linear ``linear`` (o_proj
        in self_attn, down_proj in mlp), no longer changes: the next pass records the
        Linear's input per batch and later passes compute the submodule's output as
        ``linear(recorded input)``, with the Linear as it is then (quantized). With
        ``freeze`` this makes true-sequential GPTQ's later passes cost about one Linear each
        instead of most of a block (CPU; on GPUs recomputing is cheap and the recorded inputs
        would cost memory)."""
        if self.device.type == "cpu":
            self.tails.setdefault(child, (linear, {}))

    def _ok(self, child: str, kind: str) -> bool:
        return self.acts.replay_ok.get((child, kind), True)

    def _forward(self, j: int, replay: bool = True, record: bool = True) -> torch.Tensor:
        """Block output for batch j; recorded submodule outputs / tail inputs are replayed
        (``replay``) and pending ones recorded (``record``)."""
        args, kwargs = _to(self.acts.calls[self.index][j], self.device)
        handles, patched = [], []

        def patch(module, fn):
            patched.append((module, module.__dict__.get("forward")))
            module.forward = fn

        for child, cache in self.frozen.items():
            module = self.block.get_submodule(child)
            if replay and j in cache and self._ok(child, "out"):
                patch(module, lambda *a, _out=cache[j], **k: _out)
            elif record:
                handles.append(module.register_forward_hook(
                    lambda m, a, out, _cache=cache: _cache.__setitem__(j, _detach(out))))
        for child, (name, inputs) in self.tails.items():
            module, linear = self.block.get_submodule(child), self.block.get_submodule(name)
            if any(m is module for m, _ in patched):
                continue
            if replay and j in inputs and self._ok(child, "tail"):
                shape = self.acts.child_outputs.get(child, 0)
                patch(module, lambda *a, _l=linear, _x=inputs[j], _n=shape, **k:
                      (_l(_x),) + (None,) * (_n - 1) if _n else _l(_x))
            elif record:  # prepended: it must run before a statistics hook stops the pass
                handles.append(linear.register_forward_pre_hook(
                    lambda m, a, _inputs=inputs: _inputs.__setitem__(j, a[0].detach()), prepend=True))
        try:
            with torch.no_grad(), self.autocast:
                out = self.block(self.acts.hidden[j], *args, **kwargs)
        finally:
            for h in handles:
                h.remove()
            for module, saved in patched:
                if saved is None:
                    del module.forward
                else:
                    module.forward = saved
        return out[0] if isinstance(out, tuple) else out

    def _check_replay(self) -> None:
        """Once per run and kind of replay: the block output with it must equal the recomputed
        one (a submodule whose last op is not its last Linear, or a block that changes a
        submodule's output in place, would break it); otherwise that replay is turned off,
        with a warning. Runs on batch 0 without statistics hooks."""
        kinds = [(c, "out") for c, cache in self.frozen.items() if 0 in cache]
        kinds += [(c, "tail") for c, (_, inputs) in self.tails.items() if 0 in inputs]
        kinds = [k for k in kinds if k not in self.acts.replay_ok]
        if not kinds:
            return
        replayed = self._forward(0, record=False)
        recomputed = self._forward(0, replay=False, record=False)
        ok = bool(torch.allclose(replayed.float(), recomputed.float(), rtol=1e-2, atol=1e-3))
        for k in kinds:
            self.acts.replay_ok[k] = ok
        if not ok:
            log.warning("replaying recorded outputs of %s changes the block output: recomputing instead",
                        ", ".join(c for c, _ in kinds))

    def collect(self, names: list[str], make_stats: Callable[[int, torch.device], object],
                stop_early: bool = True) -> dict[str, object]:
        """Statistics (``make_stats(K, device)`` objects with ``add(x [..., K])``) of the inputs
        of the named Linear layers over all batches. Layers that read the very same tensor
        (q, k and v) share one statistics object. ``stop_early``: end each forward once every
        named layer has seen its input."""
        self._check_replay()
        stats: dict[str, object] = {}
        seen: dict[int, tuple[torch.Tensor, object]] = {}  # id(x) -> (x kept alive, its stats)
        done: set[str] = set()
        wanted = set(names)

        def hook(name):
            def pre_hook(module, args):
                x = args[0]
                entry = seen.get(id(x))
                if entry is not None and entry[0] is x:
                    stats.setdefault(name, entry[1])
                else:
                    s = stats.get(name)
                    if s is None:
                        s = stats[name] = make_stats(x.shape[-1], x.device)
                    s.add(x.detach())
                    seen[id(x)] = (x, s)
                done.add(name)
                if stop_early and done >= wanted:
                    raise StopForward

            return pre_hook

        handles = [self.block.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
        try:
            for j in range(len(self.acts.hidden)):
                seen.clear()
                done.clear()
                try:
                    self._forward(j)
                except StopForward:
                    pass
        finally:
            for h in handles:
                h.remove()
        return stats

    def outputs(self) -> list[torch.Tensor]:
        """The block's outputs per batch; NaN/Inf is an error naming the block."""
        self._check_replay()
        outs = []
        for j, x in enumerate(self.acts.hidden):
            y = self._forward(j).to(x.dtype)
            if not torch.isfinite(y).all():
                raise LowbitError(
                    f"decoder block {self.index} produced NaN/Inf activations on the calibration data: the "
                    "model overflows in this dtype or its weights are corrupt; try float32 (--device cpu)"
                )
            outs.append(y)
        return outs


def _detach(out):
    if isinstance(out, torch.Tensor):
        return out.detach()
    return type(out)(_detach(o) for o in out) if isinstance(out, (tuple, list)) else out


def _home(block: nn.Module) -> torch.device:
    p = next(block.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _oom_message(device: torch.device, input_ids: torch.Tensor | None, where: str) -> str:
    size = "" if input_ids is None else f" with {input_ids.shape[0]} x {input_ids.shape[1]} calibration tokens"
    return (f"out of memory on {device} {where}{size}: use fewer --calibration-samples or a shorter "
            "--max-seq-length")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, OOM_ERRORS) or (isinstance(e, RuntimeError) and (
        "out of memory" in str(e) or "can't allocate memory" in str(e)))


def run(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    quantize_block: Callable[[int, nn.Module, "BlockRunner | None"], list[dict]],
    device: "str | torch.device | None" = None,
    compute_dtype="auto",
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "quantize",
) -> list[dict]:
    """Walk the decoder blocks in order: on ``device``, ``quantize_block(i, block, runner)``
    (runner None without calibration data), then the block's outputs become the next inputs.
    input_ids: LongTensor [N, L] or None. Returns the records quantize_block returns."""
    device = resolve_device(device)
    blocks = get_blocks(model)
    acts = None
    if input_ids is not None:
        if batch_size is None:
            batch_size = max(1, BATCH_TOKENS.get(device.type, 8192) // input_ids.shape[1])
        t0 = time.perf_counter()
        try:
            acts = capture(model, blocks, input_ids, batch_size, device)
        except Exception as e:
            if _is_oom(e):
                raise LowbitError(_oom_message(device, input_ids, "while capturing the calibration inputs")) from None
            raise
        if not all(torch.isfinite(h).all() for h in acts.hidden):
            raise LowbitError("the embeddings produce NaN/Inf on the calibration data: the model's weights are corrupt")
        log.info("captured %d x %d calibration tokens in %d batches (%.1f s)", *input_ids.shape,
                 len(acts.hidden), time.perf_counter() - t0)
    records: list[dict] = []
    bar = tqdm(blocks, desc=desc, unit="block", disable=not progress)
    for i, block in enumerate(bar):
        home = _home(block)
        t0 = time.perf_counter()
        try:
            block.to(device)
            runner = None
            if acts is not None:
                dtype = resolve_compute_dtype(next(block.parameters()).dtype, device, compute_dtype)
                runner = BlockRunner(block, i, acts, dtype)
            recs = quantize_block(i, block, runner)
            if runner is not None and i < len(blocks) - 1:
                acts.hidden = runner.outputs()
        except Exception as e:
            if _is_oom(e):
                acts = None
                block.to(home)
                raise LowbitError(_oom_message(device, input_ids, f"in decoder block {i}")) from None
            raise
        block.to(home)
        for r in recs:
            r["block_seconds"] = round(time.perf_counter() - t0, 3)
        records.extend(recs)
        if recs:  # the layer errors of the block, worst first
            worst = max(recs, key=lambda r: r["rel_weight_error"])
            bar.set_postfix_str(f"worst {'.'.join(worst['layer'].split('.')[-2:])} "
                                f"rel.err {worst['rel_weight_error']:.4f} loss {worst['loss']:.3g}")
    return records
