"""The ``lowbit`` command. Each subcommand is one module in this package listed in
``COMMANDS``, with ``add_arguments(parser)`` and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from ..errors import LowbitError

#: subcommand name -> (module under lowbit.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quantize": ("quantize", "quantize a model and write a checkpoint"),
    "inspect": ("inspect", "show a model's architecture, quantization and size"),
    "generate": ("generate", "generate text from a model"),
    "eval": ("evaluate", "perplexity of a model (GPTQ protocol), optionally lm-eval tasks"),
    "bench": ("bench", "time to first token, prefill/decode tokens/s and peak memory"),
    "compare": ("compare", "quantize with several methods, evaluate all, write a report"),
    "serve": ("serve", "serve a model behind an OpenAI-compatible API (or start vLLM)"),
    "chat": ("chat", "chat with a model in the terminal (local, or a running server's URL)"),
    "train": ("train", "fine-tune with LoRA on a 4-bit base (QLoRA); writes a peft adapter"),
    "merge": ("merge", "merge a LoRA adapter into its float base model"),
    "export": ("export", "convert a quantized checkpoint: lowbit, gptq, awq, compressed-tensors"),
    "push": ("push", "upload a checkpoint folder to the Hugging Face Hub with a model card"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="lowbit", description="Quantize, evaluate and serve LLMs in low bit widths.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __name__)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
        p.set_defaults(_run=mod.run)
    return parser


def silence_progress_bars() -> None:
    """--quiet: no bars from lowbit (tqdm reads TQDM_DISABLE) nor from transformers / the hub."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="lowbit: %(message)s")
    if args.quiet:
        silence_progress_bars()
    try:
        return int(args._run(args) or 0)
    except LowbitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
