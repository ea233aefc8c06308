"""The OpenAI-compatible HTTP app: `POST /v1/completions` and `/v1/chat/completions` (whole, or streamed as
server-sent events ending with `data: [DONE]`), `GET /v1/models` and `GET /health`, over a `Scheduler`.

A request becomes one `Completion` submitted to the scheduler. Its chunks arrive on the scheduler's thread and
cross into the event loop through `loop.call_soon_threadsafe` onto an asyncio queue. The completion is
cancelled (its slot freed before the next decode step) as soon as the client goes away, streamed or not, and
always when the handler ends. A client that half-closes its socket (shutdown(SHUT_WR)) is taken as gone too, as
nginx takes it (499): TCP cannot tell that from a client that has left, and freeing the slot at once matters
more, so its connection closes cleanly with no answer. The routes also answer without the `/v1` prefix, as
llama.cpp's server does.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..errors import HybridInferError
from ..generation.generate import GenerationChunk
from ..generation.sampling import SamplerSettings
from .api_key import key_check
from .openai_errors import APIError, error_body, install_error_handlers
from ..text.prompts import chat_prompt_tokens, chat_template_for, completion_prompt_tokens
from .scheduler import Completion, QueueFull, Scheduler
from .schemas import OPENAI_SAMPLING, Body, ChatCompletionRequest, CompletionRequest, RequestError, parse_request

MAX_BODY_BYTES = 32 * 2**20  # a longer request body is refused (413) before it is parsed
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def create_app(engine, scheduler: Scheduler, *, api_key: str | None = None, chat_template: str | None = None,
               sampling_defaults: SamplerSettings = OPENAI_SAMPLING) -> FastAPI:
    """The app serving `engine`'s model through `scheduler`. With `api_key`, every route but /health needs
    `Authorization: Bearer <api_key>` (an empty key, or one no client can send, raises HybridInferError:
    `api_key.usable_api_key`). `chat_template` overrides the model's; `sampling_defaults` are what a
    request's absent sampling fields take."""
    app = FastAPI(title="hybridinfer", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    model_id = os.path.basename(engine.path)
    template = chat_template_for(engine, chat_template)
    tokenizer, n_vocab, started = engine.tokenizer, engine.config.n_vocab, int(time.time())

    def start(body, prompt: list[int], max_tokens: int, prompt_field: str) -> "_Generation":
        if len(prompt) >= scheduler.n_ctx:
            raise RequestError(f"the prompt is {len(prompt)} tokens but a slot's context holds {scheduler.n_ctx} "
                               f"(-c over --parallel {scheduler.n_parallel}): shorten the prompt or raise -c",
                               param=prompt_field, code="context_length_exceeded")
        return _Generation(scheduler, prompt=prompt, max_tokens=max_tokens, stop=body.stop_strings(),
                           sampling=body.sampling(sampling_defaults), ignore_eos=bool(body.ignore_eos))

    v1 = APIRouter(dependencies=[Depends(key_check(api_key))])

    @v1.post("/v1/completions")
    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        prompt = await run_in_threadpool(completion_prompt_tokens, tokenizer, n_vocab, body.prompt)
        reply = _Reply(f"cmpl-{uuid.uuid4().hex}", model_id, chat=False, include_usage=body.include_usage)
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        return await _answer(request, start(body, prompt, max_tokens, "prompt"), reply, bool(body.stream))

    @v1.post("/v1/chat/completions")
    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, ChatCompletionRequest)
        messages = [{"role": m.role, "content": m.text() or ""} for m in body.messages]
        prompt = await run_in_threadpool(chat_prompt_tokens, tokenizer, messages, template)
        reply = _Reply(f"chatcmpl-{uuid.uuid4().hex}", model_id, chat=True, include_usage=body.include_usage)
        return await _answer(request, start(body, prompt, body.token_limit, "messages"), reply, bool(body.stream))

    @v1.get("/v1/models")
    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list",
                "data": [{"id": model_id, "object": "model", "created": started, "owned_by": "hybridinfer"}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **scheduler.status()}

    app.include_router(v1)
    return app


async def _parse(request: Request, model: type[Body]) -> Body:
    """The request body as `model` (`schemas.parse_request`), refused with 413 past MAX_BODY_BYTES."""
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    return parse_request(bytes(raw), model)


class _Generation:
    """One submitted `Completion` and the asyncio queue its chunks arrive on from the scheduler's thread."""

    def __init__(self, scheduler: Scheduler, **fields):
        """Submit a `Completion` of `fields` (prompt, max_tokens, stop, sampling, ignore_eos); 503 if refused."""
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[GenerationChunk] = asyncio.Queue()

        def deliver(chunk: GenerationChunk) -> None:  # on the scheduler's thread
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
            except RuntimeError:  # the event loop has closed: the server is shutting down
                pass

        self.completion = Completion(on_chunk=deliver, **fields)
        try:
            scheduler.submit(self.completion)
        except QueueFull as exc:
            raise APIError(503, str(exc), code="queue_full") from None
        except HybridInferError as exc:  # the scheduler is closing
            raise APIError(503, str(exc)) from None

    def cancel(self) -> None:
        self.completion.cancel()

    def usage(self) -> dict:
        """The counts the scheduler kept (final once the last chunk has arrived: it counts before it sends)."""
        c = self.completion
        return {"prompt_tokens": len(c.prompt), "completion_tokens": c.completion_tokens,
                "total_tokens": len(c.prompt) + c.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}

    def failure(self) -> str:
        return f"generation failed: {self.completion.error or 'unknown error'}"


@dataclass
class _Reply:
    """How one endpoint's answers look: OpenAI's `text_completion` or `chat.completion[.chunk]` objects."""

    id: str
    model: str
    chat: bool
    include_usage: bool

    def __post_init__(self):
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict], **fields) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **fields}

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        content = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish}
        return self._object("chat.completion" if self.chat else "text_completion", [choice], usage=usage)

    def piece(self, text: str, finish: str | None = None, role: bool = False) -> dict:
        """One streamed chunk with `text` (or only `finish`); `role` adds the assistant role (a chat's first)."""
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text or role else {})
            content = {"delta": delta}
        else:
            content = {"text": text}
        choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish}
        usage = {"usage": None} if self.include_usage else {}
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [choice], **usage)

    def usage_piece(self, usage: dict) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage)


async def _answer(request: Request, generation: _Generation, reply: _Reply, stream: bool) -> Response:
    if stream:
        return EventSourceResponse(_events(generation, reply), background=BackgroundTask(generation.cancel))
    gone = asyncio.ensure_future(_disconnect(request))
    pieces = []
    try:
        while True:
            chunk = asyncio.ensure_future(generation.queue.get())
            await asyncio.wait({chunk, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not chunk.done():
                chunk.cancel()
                return Response(status_code=499)  # the client has gone: nobody reads the answer
            chunk = chunk.result()
            pieces.append(chunk.text)
            if chunk.finish_reason == "error":
                return JSONResponse(error_body(500, generation.failure()), status_code=500)
            if chunk.finish_reason is not None:
                return JSONResponse(reply.whole("".join(pieces), chunk.finish_reason, generation.usage()))
    finally:
        gone.cancel()
        generation.cancel()


async def _events(generation: _Generation, reply: _Reply):
    """The SSE data of a streamed answer: the text as it comes, then a chunk with the finish reason (and one
    with the usage if asked). sse-starlette cancels this generator when the client goes away; `finally` then
    frees the slot at once."""
    try:
        if reply.chat:
            yield json.dumps(reply.piece("", role=True))
        while True:
            chunk = await generation.queue.get()
            if chunk.finish_reason == "error":
                yield json.dumps(error_body(500, generation.failure()))
                return
            if chunk.text:
                yield json.dumps(reply.piece(chunk.text))
            if chunk.finish_reason is not None:
                yield json.dumps(reply.piece("", chunk.finish_reason))
                break
        if reply.include_usage:
            yield json.dumps(reply.usage_piece(generation.usage()))
        yield "[DONE]"
    finally:
        generation.cancel()


async def _disconnect(request: Request) -> None:
    """Return when the client has gone (the body is already read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
