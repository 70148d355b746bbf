"""Serve a model behind an OpenAI-compatible API (/v1/models, /v1/completions,
/v1/chat/completions, /health). --engine lowbit (default) runs lowbit's own engine on CPU or
one GPU; --engine vllm starts vLLM's server with the right --quantization for the checkpoint."""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint folder, Hugging Face folder, .gguf file, hub id or 'demo'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $LOWBIT_API_KEY, else no key)")
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="requests decoded together (default: 8; vLLM: its --max-num-seqs, default its own)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + completion tokens per request (default: the model's context length)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a batch slot; more get 503 (default: 64)")
    p.add_argument("--engine", choices=("lowbit", "vllm"), default="lowbit", help="who runs the model")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to split the model over (vllm only)")
    p.add_argument("--vllm-args", default="",
                   help="more arguments for `vllm serve`, in one string (e.g. '--gpu-memory-utilization 0.9')")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: MODEL)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float parts: float32, float16, bfloat16 (default: by device)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default: torch's choice; 1 is fastest for small models on a "
                        "busy machine)")


def _check(args: argparse.Namespace) -> None:
    from ..errors import LowbitError

    if not 0 <= args.port <= 65535:
        raise LowbitError(f"--port {args.port} is not a port number (0-65535)")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise LowbitError(f"--max-batch-size {args.max_batch_size} must be at least 1")
    if args.max_queue < 1:
        raise LowbitError(f"--max-queue {args.max_queue} must be at least 1")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise LowbitError(f"--max-model-len {args.max_model_len} must be at least 2 (one prompt and one new token)")
    if args.tensor_parallel_size < 1:
        raise LowbitError(f"--tensor-parallel-size {args.tensor_parallel_size} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise LowbitError(f"--threads {args.threads} must be at least 1")
    if args.engine == "lowbit" and args.tensor_parallel_size != 1:
        raise LowbitError("--tensor-parallel-size needs --engine vllm: lowbit's engine runs on one device")
    if args.engine == "lowbit" and args.vllm_args:
        raise LowbitError("--vllm-args needs --engine vllm")


def _check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address is taken."""
    import socket

    from ..errors import LowbitError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise LowbitError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port or --host") from None


def _load_engine(args: argparse.Namespace):
    from ..errors import LowbitError
    from ..models.load import load
    from ..serve.engine import Engine

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        model = load(args.model, device=args.device, dtype=args.dtype)
    except LowbitError:
        raise
    except Exception as e:  # corrupt weights, missing files, ...: refuse to start, say why
        raise LowbitError(f"cannot load {args.model}: {type(e).__name__}: {e}") from e
    if model.tokenizer is None:
        raise LowbitError(f"{args.model} has no tokenizer files: copy them into the model folder")
    engine = Engine(model, model.tokenizer, max_batch_size=args.max_batch_size or DEFAULT_BATCH, max_model_len=args.max_model_len,
                    max_queue=args.max_queue)
    from ..serve.prompts import has_chat_template

    if not has_chat_template(model.tokenizer):
        log.warning("the tokenizer has no chat template: /v1/chat/completions formats messages as 'role: content' "
                    "lines")
    return engine


def run(args: argparse.Namespace) -> int:
    from ..errors import LowbitError

    _check(args)
    api_key = args.api_key if args.api_key is not None else (os.environ.get("LOWBIT_API_KEY") or None)
    if args.engine == "vllm":
        import shlex

        from ..serve.vllm import launch, vllm_command

        cmd = vllm_command(args.model, args.host, args.port, api_key, args.max_model_len, args.tensor_parallel_size,
                           args.max_batch_size, args.served_model_name)
        return launch(cmd + shlex.split(args.vllm_args))
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise LowbitError(f"serving needs the serve extra ({e.name} is missing): pip install 'lowbit[serve]'") from None
    _check_port(args.host, args.port)
    engine = _load_engine(args)
    name = args.served_model_name or args.model
    app = create_app(engine, name, api_key)
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it can use it (--api-key)", args.host)
    log.info("serving '%s' on http://%s:%d/v1 (batch %d, context %d tokens)", name, args.host, args.port,
             engine.max_batch_size, engine.max_model_len)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                access_log=not args.quiet)
    return 0
