"""The OpenAI request bodies lowbit serves, and their validation into engine settings.

Pydantic checks the types; ``sampling_params`` checks the values and names unsupported
options, so a client gets one clear 400 message instead of silently ignored settings.
"""
from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .sampling import SamplingParams

MAX_STOP_STRINGS = 4  # as the OpenAI API


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI error type, message, offending field."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    # Unknown fields (user, metadata, ...) are ignored, as the OpenAI API does.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None


def parse(raw: bytes, cls: type[BaseModel]) -> BaseModel:
    """Request body -> request object, or ApiError(400) naming the problem."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e}): send a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"{field}: {err['msg']}" if field else err["msg"], param=field) from None


def _unsupported(name: str, hint: str) -> ApiError:
    return ApiError(400, f"{name} is not supported by lowbit serve: {hint}", param=name)


def check_unsupported(req: _Common) -> None:
    """Options lowbit does not implement: refuse them when set to a non-default value."""
    if req.n not in (None, 1):
        raise _unsupported("n", "send one request per choice (n must be 1)")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise _unsupported(name, "leave it at 0")
    if req.logit_bias:
        raise _unsupported("logit_bias", "leave it empty")
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise _unsupported("echo", "set echo to false")
        if req.logprobs is not None:
            raise _unsupported("logprobs", "leave it unset")
        if req.best_of not in (None, 1):
            raise _unsupported("best_of", "leave it at 1")
        if req.suffix:
            raise _unsupported("suffix", "leave it unset")
    if isinstance(req, ChatRequest):
        if req.logprobs or req.top_logprobs:
            raise _unsupported("logprobs", "leave logprobs and top_logprobs unset")
        if req.tools:
            raise _unsupported("tools", "this server does not call tools")


def sampling_params(req: _Common, max_tokens: int) -> SamplingParams:
    """Validated sampling settings (defaults as the OpenAI API: temperature 1, top_p 1)."""
    temperature = 1.0 if req.temperature is None else req.temperature
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}", param="temperature")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise ApiError(400, f"top_p must be greater than 0 and at most 1, got {top_p}", param="top_p")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"stop has {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed", param="stop")
    if any(s == "" for s in stop):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=req.seed, stop=stop)
