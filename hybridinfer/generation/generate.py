"""The generation loop: prompt prefill, then sample -> decode one token at a time, with llama.cpp-style timings.

Three levels, as in mlx-lm: `generate_step` yields token ids, `stream_generate` yields small records with
text pieces, and `Engine.generate` (engine.py) collects a whole result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator

from ..kernels.compile_time import Stopwatch
from ..text.detokenizer import StreamingDetokenizer
from .sampling import Sampler
from .stop_strings import StopStringMatcher


@dataclass
class Timings:
    load_ms: float = 0.0  # without compilation
    repack_ms: float = 0.0  # part of load_ms: weights rearranged for the CPU kernels
    compile_ms: float = 0.0  # numba kernels compiled during load and generation (none when cached on disk)
    prompt_ms: float = 0.0
    prompt_tokens: int = 0  # prompt tokens actually evaluated (a cached prefix is not evaluated again)
    eval_ms: float = 0.0
    eval_tokens: int = 0  # single-token decode runs

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_ms * 1000 if self.prompt_ms > 0 else 0.0

    @property
    def eval_tps(self) -> float:
        return self.eval_tokens / self.eval_ms * 1000 if self.eval_ms > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "prompt_tps": self.prompt_tps, "eval_tps": self.eval_tps}

    def report_lines(self) -> list[str]:
        """The timing lines llama.cpp prints after a generation."""
        def rate(ms, n, unit):
            per = ms / n if n else 0.0
            return f"{ms:10.2f} ms / {n:5d} {unit} ({per:8.2f} ms per token, {n / ms * 1000 if ms else 0.0:8.2f} tokens per second)"
        total_ms = self.prompt_ms + self.eval_ms
        repack = f" (repacking weights {self.repack_ms:.2f} ms)" if self.repack_ms else ""
        return [
            f"hybridinfer_perf:        load time = {self.load_ms:10.2f} ms{repack}",
            f"hybridinfer_perf:     compile time = {self.compile_ms:10.2f} ms (CPU kernels; 0 when cached)",
            f"hybridinfer_perf: prompt eval time = {rate(self.prompt_ms, self.prompt_tokens, 'tokens')}",
            f"hybridinfer_perf:        eval time = {rate(self.eval_ms, self.eval_tokens, 'runs  ')}",
            f"hybridinfer_perf:       total time = {total_ms:10.2f} ms / {self.prompt_tokens + self.eval_tokens:5d} tokens",
        ]


@dataclass
class GenerationChunk:
    text: str  # new text since the previous chunk (may be empty while a multi-byte character is incomplete)
    token: int | None  # the generated token id, None for the final flush
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length" (token limit or context full)


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]  # generated ids, without the prompt
    finish_reason: str
    timings: Timings = field(default_factory=Timings)

    def as_dict(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason,
                "timings": self.timings.as_dict()}


def generate_step(engine, prompt_tokens: list[int], sampler: Sampler, timings: Timings) -> Iterator[int]:
    """Yield sampled token ids forever (the caller stops); each yielded token is fed back before the next."""
    with Stopwatch() as watch:
        logits, evaluated = engine.feed(prompt_tokens)
    timings.prompt_ms += watch.ms
    timings.compile_ms += watch.compile_ms
    timings.prompt_tokens += evaluated
    history = list(prompt_tokens)
    while True:
        token = sampler.sample(logits, history)
        history.append(token)
        yield token
        with Stopwatch() as watch:
            logits, _ = engine.feed(history)
        timings.eval_ms += watch.ms
        timings.compile_ms += watch.compile_ms
        timings.eval_tokens += 1


class CompletionText:
    """The text of a generation, token by token: `add(token)` gives the next chunk, with stop strings held back
    until they cannot match, and a finish reason on the last one (end of text, a stop string, `limit` tokens)."""

    def __init__(self, tokenizer, stop: list[str] | None, limit: int):
        self.tokenizer, self.limit, self.count = tokenizer, limit, 0
        self.detokenizer = StreamingDetokenizer(tokenizer, strip_leading_space=False)  # text continues the prompt
        self.stops = StopStringMatcher(stop or [])

    def add(self, token: int) -> GenerationChunk:
        if self.tokenizer.is_eog(token):
            return GenerationChunk(self.stops.feed(self.detokenizer.flush())[0] + self.stops.flush(), None, "stop")
        self.count += 1
        text, stopped = self.stops.feed(self.detokenizer.add(token))
        if stopped:
            return GenerationChunk(text, token, "stop")
        if self.count >= self.limit:
            tail, stopped = self.stops.feed(self.detokenizer.flush())
            return GenerationChunk(text + tail + ("" if stopped else self.stops.flush()), token,
                                   "stop" if stopped else "length")
        return GenerationChunk(text, token)


def token_limit(n_ctx: int, prompt_tokens: int, max_tokens: int) -> int:
    """Tokens a generation may add: max_tokens (< 0: no limit), and no more than the context has room for."""
    room = n_ctx - prompt_tokens
    return room if max_tokens < 0 else min(max_tokens, room)


def stream_generate(engine, prompt_tokens: list[int], sampler: Sampler, max_tokens: int = -1,
                    stop: list[str] | None = None, timings: Timings | None = None) -> Iterator[GenerationChunk]:
    """Yield text pieces as tokens are generated; the last chunk carries the finish reason.

    max_tokens < 0 means: until end of generation or until the context is full.
    """
    timings = timings if timings is not None else Timings()
    limit = token_limit(engine.n_ctx, len(prompt_tokens), max_tokens)
    if limit <= 0:
        yield GenerationChunk("", None, "length")
        return
    text = CompletionText(engine.tokenizer, stop, limit)
    for token in generate_step(engine, prompt_tokens, sampler, timings):
        chunk = text.add(token)
        yield chunk
        if chunk.finish_reason is not None:
            return
