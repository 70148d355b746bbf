"""Chat with a model in the terminal: a local model (loaded here, lowbit's engine) or a
running OpenAI-compatible server (MODEL is its URL, e.g. http://127.0.0.1:8000).
Type a message and press Enter; /reset starts over, /quit (or Ctrl-D) leaves."""
from __future__ import annotations

import argparse
import os
import queue
import sys
from typing import Iterator


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder, .gguf, hub id, 'demo', or the URL of a running server")
    p.add_argument("--system", default=None, help="system message that starts the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default: 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible answers")
    p.add_argument("--api-key", default=None, help="server's API key (default: $LOWBIT_API_KEY)")
    p.add_argument("--model-name", default=None, help="model name on the server (default: the first it lists)")
    p.add_argument("--device", default=None, help="local model: cuda or cpu (default: cuda if available)")


class LocalChat:
    """Answers from a model loaded in this process, streamed through the engine."""

    def __init__(self, args: argparse.Namespace):
        from ..models.load import load
        from ..serve.engine import Engine

        model = load(args.model, device=args.device)
        if model.tokenizer is None:
            from ..errors import LowbitError

            raise LowbitError(f"{args.model} has no tokenizer files: copy them into the model folder")
        self.engine = Engine(model, model.tokenizer, max_batch_size=1)

    def stream(self, messages: list[dict], args: argparse.Namespace) -> Iterator[str]:
        from ..serve.engine import RequestError
        from ..serve.prompts import chat_ids
        from ..serve.protocol import ApiError
        from ..serve.sampling import SamplingParams

        try:
            ids = chat_ids(self.engine.tokenizer, messages)
            max_tokens = min(args.max_tokens, max(1, self.engine.max_model_len - len(ids)))
            params = SamplingParams(max_tokens=self.engine.check(len(ids), max_tokens), temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed)
        except (RequestError, ApiError) as e:
            raise ChatError(f"{e} (/reset starts a new conversation)") from None
        events: queue.Queue = queue.Queue()
        req = self.engine.submit(ids, params, events.put)
        try:
            while True:
                out = events.get()
                if out.finish_reason == "error":
                    raise ChatError(out.error or "generation failed")
                yield out.text
                if out.finish_reason is not None:
                    return
        finally:
            req.cancel()


class RemoteChat:
    """Answers from a running server, through the official openai client."""

    def __init__(self, args: argparse.Namespace):
        from ..errors import LowbitError

        try:
            import openai
        except ImportError:
            raise LowbitError("chatting with a server needs the openai client: pip install 'lowbit[serve]'") from None
        base = args.model.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        key = args.api_key or os.environ.get("LOWBIT_API_KEY") or "none"
        self.openai = openai
        self.client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        try:
            self.name = args.model_name or self.client.models.list().data[0].id
        except openai.APIConnectionError:
            raise LowbitError(f"cannot reach a server at {base}: start one with `lowbit serve MODEL`") from None
        except openai.APIStatusError as e:
            raise LowbitError(f"the server at {base} refused ({e.status_code}): {_message(e)}") from None

    def stream(self, messages: list[dict], args: argparse.Namespace) -> Iterator[str]:
        try:
            chunks = self.client.chat.completions.create(
                model=self.name, messages=messages, stream=True, max_tokens=args.max_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
            for chunk in chunks:
                for choice in chunk.choices:
                    yield choice.delta.content or ""
        except self.openai.APIStatusError as e:
            raise ChatError(f"the server refused ({e.status_code}): {_message(e)}") from None
        except self.openai.APIConnectionError as e:
            raise ChatError(f"lost the server: {e}") from None


def _message(e) -> str:
    """The server's own message from an OpenAI-shaped error body."""
    body = e.body
    return body.get("message", e.message) if isinstance(body, dict) else e.message


class ChatError(Exception):
    """One failed answer; the conversation goes on."""


def run(args: argparse.Namespace) -> int:
    from ..errors import LowbitError

    if args.max_tokens < 1:
        raise LowbitError(f"--max-tokens {args.max_tokens} must be at least 1")
    if not 0 <= args.temperature <= 2:
        raise LowbitError(f"--temperature {args.temperature} must be between 0 and 2")
    if not 0 < args.top_p <= 1:
        raise LowbitError(f"--top-p {args.top_p} must be greater than 0 and at most 1")
    remote = args.model.startswith(("http://", "https://"))
    backend = RemoteChat(args) if remote else LocalChat(args)
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    if interactive:
        print("lowbit chat: /reset starts over, /quit leaves", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": text})
        pieces = []
        print("assistant> ", end="", flush=True)
        try:
            for piece in backend.stream(messages, args):
                pieces.append(piece)
                print(piece, end="", flush=True)
        except ChatError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            messages.pop()
            continue
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            print(" [interrupted]", end="")
        print()
        messages.append({"role": "assistant", "content": "".join(pieces)})
