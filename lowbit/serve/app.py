"""The OpenAI-compatible HTTP API over an ``Engine`` (FastAPI).

Routes: GET /health (no key needed, for load balancers), GET /v1/models,
POST /v1/completions, POST /v1/chat/completions (``stream: true`` gives server-sent events).
Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a
bad request, 401 for a missing or wrong API key, 503 when the queue is full, 500 when
generation itself failed. A client that disconnects has its request cancelled in the engine.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from functools import partial
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from . import prompts
from .engine import Engine, Output, QueueFull, RequestError
from .protocol import ApiError, ChatRequest, CompletionRequest, check_unsupported, parse, sampling_params
from .responses import Shape, sse, usage

log = logging.getLogger(__name__)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI default for /v1/completions


class Run:
    """The engine requests of one HTTP request, bridged from the engine thread into asyncio."""

    def __init__(self, engine: Engine, prompt_ids: list[list[int]], params: list):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()
        self.handles = []
        try:
            for i, (ids, p) in enumerate(zip(prompt_ids, params)):
                self.handles.append(engine.submit(ids, p, partial(self._put, i)))
        except BaseException:
            self.cancel()
            raise

    def _put(self, index: int, out: Output) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, out))
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            self.cancel()

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Output]]:
        """(choice index, Output) until every choice has finished; cancels the rest if abandoned."""
        remaining = len(self.handles)
        try:
            while remaining:
                index, out = await self.queue.get()
                remaining -= out.finish_reason is not None
                yield index, out
        finally:
            self.cancel()


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` under the model name ``model_name``."""
    tokenizer = engine.tokenizer
    vocab_size = engine.model.get_input_embeddings().num_embeddings
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="lowbit", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def require_key(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            return
        if not secrets.compare_digest((authorization or "").encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with", type="authentication_error")

    def check_model(name: str) -> None:
        if name != model_name:
            raise ApiError(400, f"model '{name}' is not served here; this server serves '{model_name}' "
                                "(GET /v1/models lists it)", param="model")

    def start(prompt_ids: list[list[int]], req, default_max_tokens: int | None) -> Run:
        try:
            max_tokens = req.max_tokens if req.max_tokens is not None else default_max_tokens
            params = [sampling_params(req, engine.check(len(ids), max_tokens)) for ids in prompt_ids]
            return Run(engine, prompt_ids, params)
        except RequestError as e:
            param = "messages" if isinstance(req, ChatRequest) and e.param == "prompt" else e.param
            raise ApiError(400, str(e), param=param) from None
        except QueueFull as e:
            raise ApiError(503, str(e), type="server_busy") from None

    async def answer(request: Request, run: Run, shape: Shape, stream: bool, include_usage: bool) -> Response:
        if stream:
            return StreamingResponse(stream_events(run, shape, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collect = asyncio.ensure_future(collect_events(run, len(run.handles)))
        gone = asyncio.ensure_future(_until_disconnected(request))
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():  # the client left: free its batch slots now
            collect.cancel()
            run.cancel()
            return Response(status_code=499)
        gone.cancel()
        texts, reasons, use = collect.result()
        return JSONResponse(shape.full(texts, reasons, use))

    async def collect_events(run: Run, n: int) -> tuple[list[str], list[str], dict]:
        texts: list[list[str]] = [[] for _ in range(n)]
        reasons: list[str] = [""] * n
        prompt_tokens = completion_tokens = 0
        async with contextlib.aclosing(run.events()) as events:
            async for i, out in events:
                texts[i].append(out.text)
                if out.finish_reason is not None:
                    if out.finish_reason == "error":
                        raise ApiError(500, out.error or "generation failed", type="server_error")
                    reasons[i] = out.finish_reason
                    prompt_tokens += out.prompt_tokens
                    completion_tokens += out.completion_tokens
        return ["".join(t) for t in texts], reasons, usage(prompt_tokens, completion_tokens)

    async def stream_events(run: Run, shape: Shape, include_usage: bool) -> AsyncIterator[str]:
        started: set[int] = set()
        prompt_tokens = completion_tokens = 0
        async with contextlib.aclosing(run.events()) as events:
            async for i, out in events:
                if out.finish_reason == "error":
                    yield sse(ApiError(500, out.error or "generation failed", type="server_error").body())
                    yield sse("[DONE]")
                    return
                first = i not in started
                started.add(i)
                if out.text or first:
                    yield sse(shape.chunk(i, out.text, None, include_usage, first=first))
                if out.finish_reason is not None:
                    prompt_tokens += out.prompt_tokens
                    completion_tokens += out.completion_tokens
                    yield sse(shape.chunk(i, None, out.finish_reason, include_usage))
        if include_usage:
            yield sse(shape.usage_chunk(usage(prompt_tokens, completion_tokens)))
        yield sse("[DONE]")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, **engine.stats()}

    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @router.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lowbit", "max_model_len": engine.max_model_len}]}

    @router.post("/completions")
    async def completions(request: Request) -> Response:
        req = parse(await request.body(), CompletionRequest)
        check_model(req.model)
        check_unsupported(req)
        run = start(prompts.completion_ids(tokenizer, req.prompt, vocab_size), req, COMPLETION_DEFAULT_MAX_TOKENS)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await answer(request, run, Shape("completion", model_name), req.stream, include_usage)

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse(await request.body(), ChatRequest)
        check_model(req.model)
        check_unsupported(req)
        if req.max_completion_tokens is not None:  # the newer name of max_tokens wins
            req.max_tokens = req.max_completion_tokens
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = prompts.chat_ids(tokenizer, messages)
        # No max_tokens: the rest of the context, as vLLM does.
        run = start([ids], req, None)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await answer(request, run, Shape("chat", model_name), req.stream, include_usage)

    app.include_router(router)
    return app
