"""Fine-tune a model with LoRA on a frozen 4-bit NF4 base (QLoRA) and write the adapter in
the peft format (adapter_config.json + adapter_model.safetensors). Flags follow transformers'
TrainingArguments; loss is taken on response tokens only unless --train-on-prompt."""
from __future__ import annotations

import argparse
import logging
import random

from ..train.config import OPTIMIZERS, SCHEDULERS

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model-path", "--model_name_or_path", required=True,
                   help="base model: folder, .gguf file, hub id or 'demo'")
    g.add_argument("--dataset", "--dataset-name", "--dataset_name", required=True,
                   help="training data: .jsonl/.json/.parquet file, dataset folder, hub id, or 'pydoc' (built-in)")
    g.add_argument("--dataset-split", default="train", help="split of a hub/folder dataset (default: train)")
    g.add_argument("--dataset-format", default="auto", choices=["auto", "instruction", "prompt-completion", "chat"],
                   help="record format (default: detected from the first record)")
    g.add_argument("--eval-dataset", default=None, help="held-out data (same kinds as --dataset)")
    g.add_argument("--eval-split", default="validation", help="split of --eval-dataset (default: validation)")
    g.add_argument("--eval-ratio", type=float, default=0.0,
                   help="hold out this fraction of --dataset for evaluation (default: 0)")
    g.add_argument("--max-seq-length", "--max_seq_length", type=int, default=None,
                   help="tokens per example; longer ones are cut (default: min(1024, model maximum))")
    g.add_argument("--train-on-prompt", action="store_true", help="take the loss on prompt tokens too")
    g.add_argument("--output-dir", "--output_dir", default="./outputs/adapter",
                   help="where the adapter and checkpoints go (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="empty a non-empty --output-dir first")

    t = p.add_argument_group("training (transformers' TrainingArguments names)")
    t.add_argument("--max-steps", "--max_steps", type=int, default=-1, help="optimizer steps; overrides epochs")
    t.add_argument("--num-train-epochs", "--num_train_epochs", type=float, default=1.0, help="(default: 1)")
    t.add_argument("--learning-rate", "--learning_rate", type=float, default=2e-4, help="peak LR (default: 2e-4)")
    t.add_argument("--per-device-train-batch-size", "--per_device_train_batch_size", type=int, default=4)
    t.add_argument("--per-device-eval-batch-size", "--per_device_eval_batch_size", type=int, default=8)
    t.add_argument("--gradient-accumulation-steps", "--gradient_accumulation_steps", type=int, default=1)
    t.add_argument("--warmup-ratio", "--warmup_ratio", type=float, default=0.03, help="(default: 0.03)")
    t.add_argument("--lr-scheduler-type", "--lr_scheduler_type", default="linear", choices=SCHEDULERS)
    t.add_argument("--weight-decay", "--weight_decay", type=float, default=0.0)
    t.add_argument("--max-grad-norm", "--max_grad_norm", type=float, default=1.0, help="0 = no clipping")
    t.add_argument("--logging-steps", "--logging_steps", type=int, default=10, help="(default: 10)")
    t.add_argument("--save-steps", "--save_steps", type=int, default=500, help="checkpoint every N steps, 0 = never")
    t.add_argument("--eval-steps", "--eval_steps", type=int, default=0,
                   help="evaluate every N steps (always before and after training when there is eval data)")
    t.add_argument("--gradient-checkpointing", "--gradient_checkpointing", action=argparse.BooleanOptionalAction,
                   default=False, help="recompute activations in backward to save memory")
    t.add_argument("--seed", type=int, default=42, help="(default: 42)")
    t.add_argument("--optim", default="adamw_torch", choices=OPTIMIZERS,
                   help="adamw_8bit / paged_* use bitsandbytes when installed, else torch AdamW (default: %(default)s)")
    t.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint", default=None, metavar="PATH|last",
                   help="continue from a checkpoint-<step> folder, or 'last' in --output-dir")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")

    q = p.add_argument_group("LoRA and the 4-bit base")
    q.add_argument("--lora-r", "--lora_r", type=int, default=16, help="rank (default: 16)")
    q.add_argument("--lora-alpha", "--lora_alpha", type=float, default=32, help="scale alpha/r (default: 32)")
    q.add_argument("--lora-dropout", "--lora_dropout", type=float, default=0.05, help="(default: 0.05)")
    q.add_argument("--target-modules", "--target_modules", nargs="+", default=None, metavar="NAME",
                   help="layers to adapt, e.g. q_proj v_proj (comma lists work; default: all Linear "
                        "layers of the decoder blocks)")
    q.add_argument("--load-in-4bit", "--load_in_4bit", action=argparse.BooleanOptionalAction, default=True,
                   help="quantize the frozen base to 4 bits (QLoRA; --no-load-in-4bit: 16/32-bit LoRA)")
    q.add_argument("--bnb-4bit-quant-type", "--bnb_4bit_quant_type", default="nf4", choices=["nf4", "fp4"])
    q.add_argument("--bnb-4bit-use-double-quant", "--bnb_4bit_use_double_quant",
                   action=argparse.BooleanOptionalAction, default=True, help="double quantization (default: on)")
    q.add_argument("--bnb-4bit-compute-dtype", "--bnb_4bit_compute_dtype", "--dtype", default="auto",
                   help="dtype of the base's float parts and matmuls (default: bfloat16 on CUDA, float32 on CPU)")


def _targets(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [t for v in values for t in v.split(",") if t]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import LowbitError
    from ..models.load import parse_dtype
    from ..outdir import check_output_dir
    from ..train import base, data
    from ..train.config import TrainConfig
    from ..train.lora import LoraSettings, apply_lora, trainable_summary
    from ..train.loop import train

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(args.bnb_4bit_compute_dtype) or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    cfg = TrainConfig(
        output_dir=args.output_dir, learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps, per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, warmup_ratio=args.warmup_ratio,
        lr_scheduler_type=args.lr_scheduler_type, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps, save_steps=args.save_steps, eval_steps=args.eval_steps,
        gradient_checkpointing=args.gradient_checkpointing, seed=args.seed, optim=args.optim,
    )
    settings = LoraSettings(args.lora_r, args.lora_alpha, args.lora_dropout, _targets(args.target_modules))
    if args.max_seq_length is not None and args.max_seq_length < 2:
        raise LowbitError(f"--max-seq-length {args.max_seq_length} must be at least 2")
    if not args.resume_from_checkpoint:
        check_output_dir(args.output_dir, args.overwrite)

    # Data first: a malformed record should fail in a second, not after loading the model.
    records = data.load_records(args.dataset, args.dataset_split)
    fmt = data.detect_format(records[0]) if args.dataset_format == "auto" else args.dataset_format
    eval_records: list = []
    if args.eval_dataset:
        eval_records = data.load_records(args.eval_dataset, args.eval_split)
    elif args.eval_ratio:
        records, eval_records = data.split_holdout(records, args.eval_ratio, args.seed)
    for i, r in enumerate(records):
        data.check_record(r, fmt, i)
    eval_fmt = data.detect_format(eval_records[0]) if eval_records else fmt

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tokenizer = base.load_base(args.model_path, args.load_in_4bit, args.bnb_4bit_quant_type,
                                      args.bnb_4bit_use_double_quant, dtype, device, progress=not args.quiet)
    limit = base.max_positions(model)
    seq_len = args.max_seq_length or min(1024, limit or 1024)
    if limit is not None and seq_len > limit:
        raise LowbitError(f"--max-seq-length {seq_len} is longer than the model's maximum of {limit} tokens "
                          "(max_position_embeddings): lower it")
    train_set = data.tokenize(records, tokenizer, seq_len, args.train_on_prompt, fmt)
    eval_set = data.tokenize(eval_records, tokenizer, seq_len, args.train_on_prompt, eval_fmt) if eval_records else []
    log.info("data: %d training and %d held-out examples (%s format), %d tokens", len(train_set), len(eval_set),
             fmt, sum(len(e.input_ids) for e in train_set))

    torch.manual_seed(args.seed)  # the adapter's initialization depends on the seed only
    apply_lora(model, settings)
    print(trainable_summary(model))
    report = train(model, tokenizer, train_set, eval_set, cfg, settings, str(args.model_path),
                   base.fingerprint(model), resume=args.resume_from_checkpoint, overwrite=args.overwrite,
                   progress=not args.quiet)
    line = (f"trained to step {cfg.total_steps(len(train_set))} in {report['train_seconds']:.1f} s "
            f"({report['tokens_per_second']:.0f} tokens/s); train loss {report['train_loss_first']:.4f} -> "
            f"{report['train_loss_last']:.4f}")
    if report["eval_loss_first"] is not None:
        line += f"; eval loss {report['eval_loss_first']:.4f} -> {report['eval_loss_last']:.4f}"
    print(f"{line}; adapter written to {args.output_dir}")
    return 0
