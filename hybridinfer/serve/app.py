"""The OpenAI-compatible HTTP app: `POST /v1/completions` and `/v1/chat/completions` (whole, or streamed as
server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`, and the tokenizer endpoints
(`serve/tokenization.py`), over a `Scheduler`.

A request becomes one `Completion` per prompt (a completions request may hold several: each is its own choice,
decoded together where slots are free), submitted to the scheduler at once. Their chunks arrive on the
scheduler's thread and cross into the event loop through `loop.call_soon_threadsafe` onto one asyncio queue,
tagged with their choice's index. Log-probabilities (`logprobs`, chat's `logprobs`/`top_logprobs`) come with the
chunks as scores and are shaped here (`serve/logprobs.py`); `echo` puts the prompt, and its tokens' scores, before
the generated text. The completions are cancelled (their slots freed before the next decode step) as soon as the
client goes away, streamed or not, and always when the handler ends. A client that half-closes its socket (shutdown(SHUT_WR)) is taken as gone too, as
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
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from ..errors import HybridInferError
from ..generation.sampling import SamplerSettings
from ..text.prompts import chat_prompt_tokens, chat_template_for
from .api_key import key_check
from .logprobs import TextOffsets, TokenScore, chat_logprobs, legacy_logprobs
from .openai_errors import APIError, error_body, install_error_handlers
from .scheduler import Completion, QueueFull, Scheduler, ScoredChunk
from .schemas import OPENAI_SAMPLING, Body, ChatCompletionRequest, CompletionRequest, RequestError, parse_request
from .tokenization import prompt_tokens, tokenizer_router

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

    def completion(body, prompt: list[int], max_tokens: int, field: str, **extra) -> Completion:
        """The Completion of one prompt (on_chunk set by `_Generation`); 400 if it does not fit a slot (a prompt
        that fills the slot exactly may only be scored: max_tokens 0)."""
        if len(prompt) > scheduler.n_ctx or (len(prompt) == scheduler.n_ctx and max_tokens != 0):
            raise RequestError(f"the prompt is {len(prompt)} tokens but a slot's context holds {scheduler.n_ctx} "
                               f"(-c over --parallel {scheduler.n_parallel}): shorten the prompt or raise -c",
                               param=field, code="context_length_exceeded")
        return Completion(prompt=prompt, max_tokens=max_tokens, stop=body.stop_strings(),
                          sampling=body.sampling(sampling_defaults), on_chunk=None, ignore_eos=bool(body.ignore_eos),
                          logit_bias=body.token_bias(n_vocab), **extra)

    v1 = APIRouter(dependencies=[Depends(key_check(api_key))])

    @v1.post("/v1/completions")
    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        prompts = body.prompts
        if len(prompts) > max(1, scheduler.max_queue):
            raise RequestError(f"{len(prompts)} prompts in one request, more than the queue holds "
                               f"(--queue-size {scheduler.max_queue}): send fewer at a time", param="prompt")
        add_special = body.add_special_tokens is not False
        encoded = await run_in_threadpool(
            lambda: [prompt_tokens(tokenizer, n_vocab, p, add_special) for p in prompts])
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        choices, jobs = [], []
        for index, (prompt, (tokens, added)) in enumerate(zip(prompts, encoded)):
            echo = ""
            if body.echo:
                echo = prompt if isinstance(prompt, str) else tokenizer.decode(tokens[added:])
            field = "prompt" if len(prompts) == 1 else f"prompt.{index}"
            jobs.append(completion(body, tokens, max_tokens, field, logprobs=body.logprobs, hidden=added,
                                   score_prompt=bool(body.echo) and body.logprobs is not None))
            choices.append(_Choice(index, tokenizer, body.logprobs, echo))
        reply = _Reply(f"cmpl-{uuid.uuid4().hex}", model_id, chat=False, include_usage=body.include_usage)
        return await _answer(request, _Generation(scheduler, jobs), choices, reply, bool(body.stream))

    @v1.post("/v1/chat/completions")
    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        messages = [{"role": m.role, "content": m.text() or ""} for m in body.messages]
        prompt = await run_in_threadpool(chat_prompt_tokens, tokenizer, messages, template)
        job = completion(body, prompt, body.token_limit, "messages", logprobs=body.n_logprobs)
        reply = _Reply(f"chatcmpl-{uuid.uuid4().hex}", model_id, chat=True, include_usage=body.include_usage)
        return await _answer(request, _Generation(scheduler, [job]), [_Choice(0, tokenizer, body.n_logprobs)], reply,
                             bool(body.stream))

    @v1.get("/v1/models")
    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list",
                "data": [{"id": model_id, "object": "model", "created": started, "owned_by": "hybridinfer"}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **scheduler.status()}

    app.include_router(v1)
    app.include_router(tokenizer_router(engine, template, scheduler.n_ctx, parse_body,
                                        [Depends(key_check(api_key))]))
    return app


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The request body as `model` (`schemas.parse_request`), refused with 413 past MAX_BODY_BYTES."""
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    return parse_request(bytes(raw), model)


class _Generation:
    """The submitted `Completion`s of one request and the asyncio queue their chunks arrive on from the
    scheduler's thread, as (choice index, chunk)."""

    def __init__(self, scheduler: Scheduler, completions: list[Completion]):
        """Submit `completions` (all or none); 503 if refused."""
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, ScoredChunk]] = asyncio.Queue()

        def receiver(index: int):
            def deliver(chunk: ScoredChunk) -> None:  # on the scheduler's thread
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (index, chunk))
                except RuntimeError:  # the event loop has closed: the server is shutting down
                    pass
            return deliver

        for index, c in enumerate(completions):
            c.on_chunk = receiver(index)
        self.completions = completions
        try:
            scheduler.submit(*completions)
        except QueueFull as exc:
            raise APIError(503, str(exc), code="queue_full") from None
        except HybridInferError as exc:  # the scheduler is closing
            raise APIError(503, str(exc)) from None

    def cancel(self) -> None:
        for c in self.completions:
            c.cancel()

    def usage(self) -> dict:
        """The counts the scheduler kept, summed over the prompts (final once each one's last chunk has arrived:
        it counts before it sends)."""
        prompt = sum(len(c.prompt) for c in self.completions)
        generated = sum(c.completion_tokens for c in self.completions)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated,
                "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in self.completions)}}

    def failure(self) -> str:
        error = next((c.error for c in self.completions if c.error), None)
        return f"generation failed: {error or 'unknown error'}"


@dataclass(eq=False)
class _Choice:
    """One choice of an answer as it arrives: its text pieces, its logprobs (when asked: `n_logprobs` is not
    None) and its finish reason. `echo` is the prompt's text when the answer starts with it."""

    index: int
    tokenizer: object
    n_logprobs: int | None
    echo: str = ""
    pieces: list[str] = field(default_factory=list)
    scores: list[TokenScore] = field(default_factory=list)  # generated tokens' (chat)
    legacy: dict | None = None  # the completions logprobs object so far
    finish: str | None = None

    def __post_init__(self):
        self.prompt_offsets = TextOffsets(self.tokenizer, 0, strip_leading_space=True)
        self.offsets = TextOffsets(self.tokenizer, len(self.echo))

    def add(self, chunk: ScoredChunk) -> tuple[str, list[TokenScore]]:
        """Take `chunk`; return the text it adds (the echoed prompt for the prompt's chunk) and its scores."""
        text = self.echo if chunk.prompt else chunk.text
        self.pieces.append(text)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        if not chunk.prompt:
            self.scores += chunk.scores
        return text, chunk.scores

    def legacy_part(self, chunk: ScoredChunk) -> dict:
        """The completions logprobs object of `chunk`'s scores (also added to the whole answer's)."""
        part = legacy_logprobs(self.tokenizer, chunk.scores, self.prompt_offsets if chunk.prompt else self.offsets)
        if self.legacy is None:
            self.legacy = {key: [] for key in part}
        for key, values in part.items():
            self.legacy[key] += values
        return part

    @property
    def text(self) -> str:
        return "".join(self.pieces)


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

    def logprobs(self, choice: _Choice, scores: list[TokenScore], chunk: ScoredChunk | None = None) -> dict | None:
        if choice.n_logprobs is None:
            return None
        if self.chat:
            return {"content": chat_logprobs(choice.tokenizer, scores), "refusal": None}
        return choice.legacy_part(chunk) if chunk is not None else choice.legacy

    def whole(self, choices: list[_Choice], usage: dict) -> dict:
        listed = []
        for c in choices:
            content = {"message": {"role": "assistant", "content": c.text}} if self.chat else {"text": c.text}
            if self.chat:
                logprobs = self.logprobs(c, c.scores)
            else:
                logprobs = None if c.n_logprobs is None else (c.legacy or legacy_logprobs(c.tokenizer, [], c.offsets))
            listed.append({"index": c.index, **content, "logprobs": logprobs, "finish_reason": c.finish})
        return self._object("chat.completion" if self.chat else "text_completion", listed, usage=usage)

    def piece(self, index: int, text: str, finish: str | None = None, role: bool = False,
              logprobs: dict | None = None) -> dict:
        """One streamed chunk of choice `index` with `text` (or only `finish`); `role` adds the assistant role (a
        chat's first)."""
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text or role else {})
            content = {"delta": delta}
        else:
            content = {"text": text}
        choice = {"index": index, **content, "logprobs": logprobs, "finish_reason": finish}
        usage = {"usage": None} if self.include_usage else {}
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [choice], **usage)

    def usage_piece(self, usage: dict) -> dict:
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [], usage=usage)


async def _answer(request: Request, generation: _Generation, choices: list[_Choice], reply: _Reply,
                  stream: bool) -> Response:
    if stream:
        return EventSourceResponse(_events(generation, choices, reply), background=BackgroundTask(generation.cancel))
    gone = asyncio.ensure_future(_disconnect(request))
    for choice in choices:
        if choice.echo and not generation.completions[choice.index].score_prompt:
            choice.pieces.append(choice.echo)  # echoed without scores: the scheduler sends no prompt chunk
    try:
        while any(c.finish is None for c in choices):
            arrived = asyncio.ensure_future(generation.queue.get())
            await asyncio.wait({arrived, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not arrived.done():
                arrived.cancel()
                return Response(status_code=499)  # the client has gone: nobody reads the answer
            index, chunk = arrived.result()
            if chunk.finish_reason == "error":
                return JSONResponse(error_body(500, generation.failure()), status_code=500)
            choices[index].add(chunk)
            if not reply.chat and choices[index].n_logprobs is not None:
                choices[index].legacy_part(chunk)
        return JSONResponse(reply.whole(choices, generation.usage()))
    finally:
        gone.cancel()
        generation.cancel()


async def _events(generation: _Generation, choices: list[_Choice], reply: _Reply):
    """The SSE data of a streamed answer: per choice, the echoed prompt if asked, the text (and its logprobs) as it
    comes, then a chunk with the finish reason; a usage chunk if asked. sse-starlette cancels this generator when
    the client goes away; `finally` then frees the slots at once."""
    try:
        for choice in choices:
            if reply.chat:
                yield json.dumps(reply.piece(choice.index, "", role=True))
            elif choice.echo and not generation.completions[choice.index].score_prompt:
                choice.pieces.append(choice.echo)
                yield json.dumps(reply.piece(choice.index, choice.echo))
        while any(c.finish is None for c in choices):
            index, chunk = await generation.queue.get()
            if chunk.finish_reason == "error":
                yield json.dumps(error_body(500, generation.failure()))
                return
            choice = choices[index]
            text, scores = choice.add(chunk)
            logprobs = reply.logprobs(choice, scores, chunk) if scores else None
            if text or (logprobs and (logprobs.get("content") or logprobs.get("tokens"))):  # chat: no end-of-text
                yield json.dumps(reply.piece(index, text, logprobs=logprobs))
            if chunk.finish_reason is not None:
                yield json.dumps(reply.piece(index, "", chunk.finish_reason))
        if reply.include_usage:
            yield json.dumps(reply.usage_piece(generation.usage()))
        yield "[DONE]"
    finally:
        generation.cancel()


async def _disconnect(request: Request) -> None:
    """Return when the client has gone (the body is already read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
