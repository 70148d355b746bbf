"""Token ids -> text pieces for streaming, with stop strings.

Decoding token by token is wrong for byte-level and sentencepiece tokenizers (a character
can span tokens; a leading space belongs to the next word), so the whole generated sequence
is decoded at every step, after a few prompt tokens as context, and only the new part is
released. Text that might still become a stop string, or an incomplete UTF-8 character
(decoded as U+FFFD), is held back until the next token decides it.
"""
from __future__ import annotations

_REPLACEMENT = "\ufffd"
_CONTEXT_TOKENS = 4  # prompt tokens decoded before the generated ones, then cut off again


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class TextStream:
    """Incremental detokenizer of one request: ``add(token) -> (new_text, stopped)``."""

    def __init__(self, tokenizer, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the generated text already released
        self.context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.context_text = self._decode(self.context)
        if self.context_text.endswith(_REPLACEMENT):  # a split character would shift the cut
            self.context, self.context_text = [], ""
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> tuple[str, bool]:
        """Append one generated token. Returns (text released now, whether a stop string ended it)."""
        self.ids.append(token)
        full = self._decode(self.context + self.ids)
        self.text = full[len(self.context_text):] if full.startswith(self.context_text) else self._decode(self.ids)
        if self.stop:
            start = max(0, self.emitted - max(len(s) for s in self.stop) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                return self._release(len(self.text)), True
        end = len(self.text) - held_back(self.text, self.stop)
        while end > self.emitted and self.text[end - 1] == _REPLACEMENT:
            end -= 1
        return self._release(end), False

    def flush(self) -> str:
        """The held-back rest, when generation ends for another reason than a stop string."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece
