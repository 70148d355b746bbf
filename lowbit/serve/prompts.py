"""Prompts -> token ids: the tokenizer's chat template for chat, plain text for completions."""
from __future__ import annotations

import logging

from .protocol import ApiError

log = logging.getLogger(__name__)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_chat_text(messages: list[dict]) -> str:
    """A readable fallback for tokenizers without a chat template: 'role: content' lines."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation [{'role', 'content'}, ...] ending with the assistant's turn."""
    if has_chat_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template's own checks (e.g. roles must alternate) explain the problem
            raise ApiError(400, f"the model's chat template rejected the messages: {e}", param="messages") from None
        # The template writes the special tokens (BOS, role markers) itself.
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(plain_chat_text(messages))["input_ids"]


def completion_ids(tokenizer, prompt, vocab_size: int) -> list[list[int]]:
    """One list of token ids per prompt: a string, strings, token ids or lists of token ids.

    vocab_size: rows of the model's embedding; larger ids would fail the whole batch's forward.
    """
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt is empty: send a string", param="prompt")
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = tokenizer(p)["input_ids"]
        else:
            bad = [t for t in p if not 0 <= t < vocab_size]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                               param="prompt")
            ids = list(p)
        out.append(ids)
    return out
