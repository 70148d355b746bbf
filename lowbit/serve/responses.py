"""OpenAI response bodies and stream chunks, as plain dicts (pure functions)."""
from __future__ import annotations

import json
import time
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: dict | str) -> str:
    """One server-sent event; the stream ends with ``sse('[DONE]')``."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


class Shape:
    """Builds the bodies of one response (completion or chat) with a shared id and timestamp."""

    def __init__(self, kind: str, model: str):
        self.chat = kind == "chat"
        self.id = new_id("chatcmpl" if self.chat else "cmpl")
        self.created = int(time.time())
        self.model = model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def full(self, texts: list[str], reasons: list[str], use: dict) -> dict:
        """The non-streaming answer: one choice per prompt."""
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
            return {**self._head("chat.completion"), "choices": choices, "usage": use}
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._head("text_completion"), "choices": choices, "usage": use}

    def chunk(self, index: int, text: str | None, finish_reason: str | None, with_usage: bool,
              first: bool = False) -> dict:
        """A stream chunk: new text of choice ``index`` and/or its finish reason.

        Chat: the first chunk of a choice carries the role; text None gives an empty delta.
        """
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            body = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            body = {**self._head("text_completion"), "choices": [choice]}
        if with_usage:  # stream_options.include_usage: null on every chunk but the last
            body["usage"] = None
        return body

    def usage_chunk(self, use: dict) -> dict:
        """The last chunk under stream_options.include_usage: no choices, the usage."""
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": use}
