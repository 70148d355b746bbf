"""The supervised fine-tuning loop: seeded data order, gradient accumulation, warmup + decay,
gradient checkpointing, loss logging, evaluation, checkpoints and exact resume.

Loss: token-level cross entropy on the labels (IGNORE_INDEX excluded), summed over all
micro-batches of an optimizer step and divided by that step's number of target tokens, so
accumulation gives the same gradient as one big batch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..errors import LowbitError
from . import checkpoints
from .adapters import save_adapter
from .config import TrainConfig, lr_factor
from .data import IGNORE_INDEX, Example, collate
from .lora import LoraSettings, lora_layers

log = logging.getLogger(__name__)

REPORT_FILE = "train_report.json"


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token CE over target tokens (fp32 scalar), number of target tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"]
    # Target of position t is token t+1: shift the labels (cheap) rather than slice the
    # logits [B, T, V] (a copy of the largest activation of a small model).
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)  # [B, T]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((target != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate(model: nn.Module, examples: list[Example], batch_size: int, pad_id: int) -> float:
    """Mean token loss over ``examples`` (dropout off)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_id).items()}
        s, k = loss_sum(model, batch)
        total, n = total + float(s), n + k
    model.train(was_training)
    return total / max(n, 1)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, what it is). bitsandbytes' 8-bit / paged AdamW when asked and installed;
    torch's AdamW otherwise, with a warning saying so."""
    kwargs = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    if cfg.optim != "adamw_torch":
        try:
            import bitsandbytes as bnb
        except ImportError:
            log.warning("--optim %s needs bitsandbytes, which is not installed: using plain torch AdamW "
                        "(pip install bitsandbytes for the memory-saving optimizer)", cfg.optim)
        else:
            cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
                   "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[cfg.optim]
            return cls(params, **kwargs), f"{cls.__name__} (bitsandbytes {bnb.__version__})"
    return torch.optim.AdamW(params, **kwargs), "AdamW (torch)"


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn transformers' activation (gradient) checkpointing of the blocks on or off."""
    if not on:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers also makes the embedding output require grad, which only reentrant
    # checkpointing needs; non-reentrant works without, and the block-0 input grad is wasted work.
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()


class _Batches:
    """The micro-batches of every optimizer step, in a seeded order that depends only on
    (seed, epoch): resuming at step s replays exactly the batches s would have seen."""

    def __init__(self, examples: list[Example], cfg: TrainConfig, pad_id: int):
        self.examples, self.cfg, self.pad_id = examples, cfg, pad_id
        self.per_epoch = cfg.updates_per_epoch(len(examples))
        self._epoch, self._order = -1, None

    def step(self, step: int) -> list[dict[str, torch.Tensor]]:
        epoch, window = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.cfg.seed + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.examples), generator=g).tolist()
        bs, accum = self.cfg.per_device_train_batch_size, self.cfg.gradient_accumulation_steps
        out = []
        for m in range(window * accum, (window + 1) * accum):
            idx = self._order[m * bs:(m + 1) * bs]
            if not idx:
                break
            out.append(collate([self.examples[i] for i in idx], self.pad_id))
        return out

    def epoch_of(self, step: int) -> float:
        return step / self.per_epoch


def _prepare_output(out: Path, overwrite: bool, resuming: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LowbitError(f"--output-dir {out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not resuming:
        if not overwrite:
            raise LowbitError(f"output folder {out} is not empty: choose another --output-dir, pass --overwrite, "
                              "or --resume-from-checkpoint last")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _save_final(out: Path, model: nn.Module, tokenizer, settings: LoraSettings, base_model: str,
                state: dict, report: dict) -> None:
    """Adapter, tokenizer and state into ``out``; files are written aside and moved in, the
    adapter config last, so a killed run never leaves a loadable half adapter."""
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        save_adapter(model, tmp, settings, base_model)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / checkpoints.STATE_FILE).write_text(json.dumps(state, indent=2))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        files = sorted(tmp.iterdir(), key=lambda p: p.name == "adapter_config.json")
        for f in files:
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(model: nn.Module, tokenizer, train_set: list[Example], eval_set: list[Example], cfg: TrainConfig,
          settings: LoraSettings, base_model: str, fingerprint: dict, resume: str | None = None,
          overwrite: bool = False, progress: bool = True) -> dict:
    """Train the LoRA layers of ``model`` and write the adapter to ``cfg.output_dir``.
    Returns the report (losses, timings, memory) that is also written as train_report.json."""
    out = Path(cfg.output_dir)
    ckpt = checkpoints.find_checkpoint(resume, out) if resume else None
    _prepare_output(out, overwrite, resuming=ckpt is not None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    names = list(lora_layers(model))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LowbitError("the model has no trainable parameters: apply LoRA first")
    optimizer, opt_name = make_optimizer(params, cfg)
    log.info("optimizer: %s", opt_name)
    total = cfg.total_steps(len(train_set))
    warmup = cfg.warmup_steps(total)
    batches = _Batches(train_set, cfg, pad_id)
    meta = checkpoints.lora_meta(settings, names)
    state = {"global_step": 0, "total_steps": total, "log_history": [], "base_model": base_model,
             "fingerprint": fingerprint, "lora": meta, "config": cfg.to_dict(), "optimizer": opt_name,
             "n_train_examples": len(train_set)}
    if ckpt is not None:
        old = checkpoints.read_state(ckpt)
        checkpoints.check_compatible(old, fingerprint, meta, ckpt)
        checkpoints.restore(ckpt, model, optimizer)
        state.update(global_step=old["global_step"], log_history=old.get("log_history", []))
        if old.get("n_train_examples") != len(train_set):
            log.warning("checkpoint %s saw %s training examples, this run has %d: data order differs",
                        ckpt, old.get("n_train_examples"), len(train_set))
        log.info("resumed from %s at step %d", ckpt, state["global_step"])

    if cfg.gradient_checkpointing:
        set_checkpointing(model, True)
    model.train()
    history = state["log_history"]
    if eval_set and state["global_step"] == 0:
        history.append({"step": 0, "eval_loss": evaluate(model, eval_set, cfg.per_device_eval_batch_size, pad_id)})
        log.info("step 0: eval loss %.4f", history[-1]["eval_loss"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0, step_seconds, step_tokens = time.perf_counter(), [], []
    iv_loss, iv_tok = 0.0, 0
    bar = tqdm(total=total, initial=state["global_step"], desc="training", unit="step", disable=not progress)
    with logging_redirect_tqdm():
        for step in range(state["global_step"], total):
            t_step = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = cfg.learning_rate * lr_factor(step, total, warmup, cfg.lr_scheduler_type)
            micro = [{k: v.to(device) for k, v in b.items()} for b in batches.step(step)]
            n_target = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
            for b in micro:
                s, _ = loss_sum(model, b)
                (s / n_target).backward()
                iv_loss += float(s.detach())
            iv_tok += n_target
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # honest per-step times
            step_seconds.append(time.perf_counter() - t_step)
            step_tokens.append(sum(int(b["attention_mask"].sum()) for b in micro))
            state["global_step"] = done = step + 1
            bar.update(1)
            if done % cfg.logging_steps == 0 or done == total:
                rec = {"step": done, "epoch": round(batches.epoch_of(done), 4), "loss": iv_loss / max(iv_tok, 1),
                       "learning_rate": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm}
                history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
                log.info("step %d/%d: loss %.4f, lr %.3g, grad norm %.3f", done, total, rec["loss"],
                         rec["learning_rate"], grad_norm)
                iv_loss, iv_tok = 0.0, 0
            if eval_set and cfg.eval_steps and done % cfg.eval_steps == 0 and done != total:
                history.append({"step": done, "eval_loss": evaluate(model, eval_set, cfg.per_device_eval_batch_size, pad_id)})
                log.info("step %d: eval loss %.4f", done, history[-1]["eval_loss"])
            if cfg.save_steps and done % cfg.save_steps == 0 and done != total:
                checkpoints.save_checkpoint(out / f"checkpoint-{done}", model, optimizer, state, settings, base_model)
    bar.close()
    train_seconds = time.perf_counter() - t0
    if eval_set:
        history.append({"step": total, "eval_loss": evaluate(model, eval_set, cfg.per_device_eval_batch_size, pad_id)})
        log.info("step %d: eval loss %.4f", total, history[-1]["eval_loss"])
    if cfg.gradient_checkpointing:
        set_checkpointing(model, False)
    model.eval()
    report = _report(history, train_seconds, step_seconds, step_tokens, device, opt_name)
    _save_final(out, model, tokenizer, settings, base_model, state, report)
    return report


def _report(history: list[dict], seconds: float, step_seconds: list[float], step_tokens: list[int],
            device: torch.device, opt_name: str) -> dict:
    """Losses, and speed: tokens/s over the whole run and over the steady steps (from the
    third step on: the first ones include warm-up such as allocator growth and autotuning)."""
    tokens = sum(step_tokens)
    steady = slice(2, None) if len(step_seconds) > 3 else slice(None)
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    report = {
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "eval_loss_first": evals[0] if evals else None, "eval_loss_last": evals[-1] if evals else None,
        "train_seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds if seconds else None,
        "steady_tokens_per_second": (sum(step_tokens[steady]) / sum(step_seconds[steady])) if step_seconds else None,
        "step_seconds": [round(t, 4) for t in step_seconds],
        "optimizer": opt_name,
    }
    if device.type == "cuda":
        report["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return report
