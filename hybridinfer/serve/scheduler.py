"""The slots of `hybridinfer serve`: up to N completions decoded together, one step at a time.

One thread owns the engine. Each turn it
  1. starts waiting completions in free slots: in the free slot whose cache holds the longest prefix of the
     prompt (that prefix is not evaluated again, as llama.cpp picks slots by prompt similarity), evaluating the
     rest of the prompt and sampling the first token. A completion that scores its prompt (echo with logprobs)
     needs the logits of every prompt position: it is evaluated whole by `Engine.logits`, which works in slot 0
     (sequence 0), so it waits for slot 0 (other completions take slot 0 last);
  2. evaluates one new token of every running completion in one forward pass (`Engine.step`: each weight row
     is read once for all of them; the sparse FFN takes each one's active neurons) and samples each one's next
     token with its own sampler, stop strings and limit (`generation.generate.CompletionText`).
A cancelled completion (its client went away) leaves its slot before the next step. Completions beyond N wait
in a bounded queue; a full queue refuses new ones (`QueueFull`: the server answers 503).

With `logprobs`, each chunk carries the scores (`serve.logprobs.TokenScore`) of the tokens sampled for it, an end
of text included, and an echoed prompt's scores come first in a chunk of their own (`ScoredChunk.prompt`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np

from ..errors import HybridInferError
from ..generation.generate import CompletionText, GenerationChunk, Timings, token_limit
from ..generation.sampling import Sampler, SamplerSettings
from .logprobs import TokenScore, prompt_scores, score_rows

log = logging.getLogger(__name__)


class QueueFull(HybridInferError):
    pass


@dataclass(eq=False)
class Completion:
    """One request's generation. `on_chunk` is called from the scheduler's thread with each text piece; the last
    call has a finish_reason ("stop", "length", or "error" with `error` set). Nothing is called after `cancel`."""

    prompt: list[int]  # token ids, fewer than the slot's context (`Scheduler.n_ctx`)
    max_tokens: int  # < 0: until end of text or a full context
    stop: list[str]
    sampling: SamplerSettings
    on_chunk: Callable[[ScoredChunk], None]
    ignore_eos: bool = False  # as llama.cpp's server: end-of-text tokens are never sampled (benchmarks)
    logprobs: int | None = None  # score each sampled token with this many alternatives (None: no scores)
    score_prompt: bool = False  # score the prompt's own tokens too (echo: one forward pass, from an empty cache)
    hidden: int = 0  # leading prompt tokens the server added (a BOS): evaluated, never scored for the client
    logit_bias: dict[int, float] | None = None  # added to the logits before sampling; -inf bans
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values the slot already held
    error: str | None = None
    timings: Timings = field(default_factory=Timings)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class ScoredChunk(GenerationChunk):
    """A chunk with the scores of its tokens (empty without `logprobs`); `prompt`: the scores are the echoed
    prompt's (text "", sent before any generated text)."""

    scores: list[TokenScore] = field(default_factory=list)
    prompt: bool = False


@dataclass(eq=False)
class _Slot:
    index: int
    completion: Completion | None = None
    sampler: Sampler | None = None
    text: CompletionText | None = None
    history: list[int] = field(default_factory=list)  # prompt and generated tokens, the last not yet evaluated


@dataclass
class DecodeStats:
    """Decoding steps (prompts apart): tokens generated, seconds spent, steps taken."""

    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0


class Scheduler:
    """`start`: decode on a thread of its own, started now; else the caller runs the loop (`run`) on a thread of
    its choosing. The main thread decodes faster (numba's OpenMP workers are pooled per calling thread; measured in
    docs/cpu-decoding.md), so `serve` decodes on the main thread and answers HTTP on another."""

    def __init__(self, engine, n_parallel: int = 1, max_queue: int = 64, start: bool = True):
        engine.hold_sequences(n_parallel)
        self.engine, self.n_parallel, self.max_queue = engine, n_parallel, max_queue
        self.n_ctx = engine.n_ctx  # positions of one slot
        self.stats = DecodeStats()
        self._slots = [_Slot(i) for i in range(n_parallel)]
        self._waiting: collections.deque[Completion] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._threads = numba.get_num_threads()  # numba's setting is per thread: -t, as the engine got it
        self._thread = None
        if start:
            self._thread = threading.Thread(target=self.run, name="hybridinfer-slots", daemon=True)
            self._thread.start()

    def submit(self, *completions: Completion) -> None:
        """Queue `completions` (one request's prompts): all of them, or none if the queue has no room for all."""
        with self._wake:
            if self._closed:
                raise HybridInferError("the server is shutting down")
            self._prune()
            if len(self._waiting) + len(completions) > self.max_queue:
                raise QueueFull(f"the server is busy: {self.n_parallel} requests running and {len(self._waiting)} "
                                "waiting; try again later")
            self._waiting.extend(completions)
            self._wake.notify()

    def _prune(self) -> None:
        """Drop the waiting completions whose clients went away (they hold no place in the queue)."""
        if any(c.cancelled for c in self._waiting):
            self._waiting = collections.deque(c for c in self._waiting if not c.cancelled)

    def status(self) -> dict:
        with self._wake:
            self._prune()
            busy = sum(slot.completion is not None for slot in self._slots)
            return {"slots_busy": busy, "slots": self.n_parallel, "queued": len(self._waiting)}

    def close(self) -> None:
        """Stop the loop after its current step (from any thread); waiting and running completions end with an
        error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """The decoding loop, on the calling thread: until `close`, or until `until()` holds after a step."""
        numba.set_num_threads(self._threads)
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running():
                    self._wake.wait()
                if self._closed:
                    break
                starting = self._take_waiting()
            for slot, completion in self._place(starting):
                self._start(slot, completion)
            self._step()
            if until is not None and until():
                return
        for completion in list(self._waiting) + [s.completion for s in self._slots if s.completion is not None]:
            self._fail(completion, "the server is shutting down")

    def _running(self) -> list[_Slot]:
        """The slots with a completion; a cancelled one leaves its slot here (its cache stays for prefixes)."""
        for slot in self._slots:
            if slot.completion is not None and slot.completion.cancelled:
                slot.completion = None
        return [slot for slot in self._slots if slot.completion is not None]

    def _free_slots(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.completion is None]

    def _take_waiting(self) -> list[Completion]:
        """The waiting completions that start now (under the lock), in the queue's order, one per free slot: one
        that scores its prompt only if slot 0 is free and no other such one starts (later ones may start before
        it); `_place` gives them their slots."""
        self._running()  # cancelled completions leave their slots
        free = self._free_slots()
        slot0_free = any(slot.index == 0 for slot in free)
        starting, still = [], collections.deque()
        for completion in self._waiting:
            if completion.cancelled:
                continue
            if len(starting) < len(free) and (not completion.score_prompt or slot0_free):
                starting.append(completion)
                slot0_free = slot0_free and not completion.score_prompt
            else:
                still.append(completion)
        self._waiting = still
        return starting

    def _place(self, starting: list[Completion]) -> list[tuple[_Slot, Completion]]:
        """Slots for `starting`: slot 0 for one that scores its prompt, for each other the free slot holding the
        longest prefix of its prompt (slot 0 last among equals)."""
        free, placed = self._free_slots(), []
        for completion in sorted(starting, key=lambda c: not c.score_prompt):
            if completion.score_prompt:
                slot = next(s for s in free if s.index == 0)
            else:
                slot = max(free, key=lambda s: (self.engine.held_prefix(completion.prompt, s.index), s.index != 0))
            free.remove(slot)
            placed.append((slot, completion))
        return sorted(placed, key=lambda pair: starting.index(pair[1]))

    def _start(self, slot: _Slot, completion: Completion) -> None:
        """Evaluate the prompt (what the slot does not hold of it; all of it, in slot 0, to score it) and sample
        the first token."""
        slot.completion = completion
        try:
            limit = token_limit(self.n_ctx, len(completion.prompt), completion.max_tokens)
            if limit <= 0 and not completion.score_prompt:
                self._emit(slot, ScoredChunk("", None, "length"))
                return
            started = time.perf_counter()
            if completion.score_prompt:
                rows = self.engine.logits(completion.prompt)  # sequence 0 = slot 0, which now holds the prompt
                logits, evaluated = rows[-1].copy(), len(completion.prompt)
                scores = prompt_scores(rows, completion.prompt, completion.logprobs or 0)[completion.hidden:]
                del rows
            else:
                logits, evaluated = self.engine.feed(completion.prompt, sequence=slot.index)
            completion.timings.prompt_ms = (time.perf_counter() - started) * 1000
            completion.timings.prompt_tokens = evaluated
            completion.cached_tokens = len(completion.prompt) - evaluated
            if completion.score_prompt:
                self._emit(slot, ScoredChunk("", None, "length" if limit <= 0 else None, scores, prompt=True))
                if limit <= 0:
                    return
            slot.sampler = Sampler(completion.sampling)
            slot.text = CompletionText(self.engine.tokenizer, completion.stop, limit)
            slot.history = list(completion.prompt)
            self._sample(slot, logits)
        except Exception as exc:  # noqa: BLE001 (a bad request or a broken model must not stop the other slots)
            self._fail_slot(slot, exc)

    def _step(self) -> None:
        """One new token of every running completion, evaluated together."""
        running = self._running()
        if not running:
            return
        started = time.perf_counter()
        try:
            if len(running) == 1:  # as `generate` decodes (and the hybrid runtime can: one sequence)
                slot = running[0]
                rows = [self.engine.feed(slot.history, sequence=slot.index)[0]]
            else:
                rows = self.engine.step([slot.history[-1] for slot in running], [slot.index for slot in running])
        except Exception as exc:  # noqa: BLE001
            for slot in running:
                self._fail_slot(slot, exc)
            return
        elapsed = time.perf_counter() - started
        self.stats.tokens += len(running)
        self.stats.steps += 1
        for slot, logits in zip(running, rows):
            slot.completion.timings.eval_ms += elapsed * 1000
            slot.completion.timings.eval_tokens += 1
            self._sample(slot, logits)
        self.stats.seconds += time.perf_counter() - started

    def _sample(self, slot: _Slot, logits: np.ndarray) -> None:
        """Sample the next token from `logits` (biased as the completion asks; scored unbiased)."""
        completion = slot.completion
        biased = logits
        if completion.ignore_eos or completion.logit_bias:
            biased = logits.copy()
            if completion.logit_bias:
                ids = list(completion.logit_bias)
                biased[ids] += np.array(list(completion.logit_bias.values()), np.float32)
            if completion.ignore_eos:
                biased[list(self.engine.tokenizer.eog_ids)] = -np.inf
        token = slot.sampler.sample(biased, slot.history)
        slot.history.append(token)
        chunk = slot.text.add(token)
        if chunk.token is not None:
            completion.completion_tokens += 1
        scores = score_rows(logits, [token], completion.logprobs) if completion.logprobs is not None else []
        self._emit(slot, ScoredChunk(chunk.text, chunk.token, chunk.finish_reason, scores))

    def _emit(self, slot: _Slot, chunk: GenerationChunk) -> None:
        completion = slot.completion
        if chunk.finish_reason is not None:
            slot.completion = None
        if not completion.cancelled:
            try:
                completion.on_chunk(chunk)
            except Exception:  # noqa: BLE001 (the receiver's failure is its own)
                log.exception("a completion's receiver failed")

    def _fail_slot(self, slot: _Slot, exc: Exception) -> None:
        completion, slot.completion = slot.completion, None
        if not isinstance(exc, HybridInferError):
            log.error("decoding failed: %r", exc)
        self._fail(completion, str(exc) if isinstance(exc, HybridInferError) else f"internal error: {exc!r}")

    def _fail(self, completion: Completion, message: str) -> None:
        completion.error = message
        if not completion.cancelled:
            try:
                completion.on_chunk(ScoredChunk("", None, "error"))
            except Exception:  # noqa: BLE001
                log.exception("a completion's receiver failed")
