"""The slots of `hybridinfer serve`: up to N completions decoded together, one step at a time.

One thread owns the engine. Each turn it
  1. starts waiting completions in free slots: in the free slot whose cache holds the longest prefix of the
     prompt (that prefix is not evaluated again, as llama.cpp picks slots by prompt similarity), evaluating the
     rest of the prompt and sampling the first token;
  2. evaluates one new token of every running completion in one forward pass (`Engine.step`: each weight row
     is read once for all of them; the sparse FFN takes each one's active neurons) and samples each one's next
     token with its own sampler, stop strings and limit (`generation.generate.CompletionText`).
A cancelled completion (its client went away) leaves its slot before the next step. Completions beyond N wait
in a bounded queue; a full queue refuses new ones (`QueueFull`: the server answers 503).
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
    on_chunk: Callable[[GenerationChunk], None]
    ignore_eos: bool = False  # as llama.cpp's server: end-of-text tokens are never sampled (benchmarks)
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

    def submit(self, completion: Completion) -> None:
        with self._wake:
            if self._closed:
                raise HybridInferError("the server is shutting down")
            self._prune()
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {self.n_parallel} requests running and {len(self._waiting)} "
                                "waiting; try again later")
            self._waiting.append(completion)
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
                starting = []
                for slot in self._free_slots():
                    while self._waiting and self._waiting[0].cancelled:
                        self._waiting.popleft()
                    if not self._waiting:
                        break
                    starting.append(self._waiting.popleft())
            for completion in starting:
                self._start(self._best_slot(completion.prompt), completion)
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

    def _best_slot(self, prompt: list[int]) -> _Slot:
        """The free slot whose cache holds the longest prefix of `prompt`."""
        return max(self._free_slots(), key=lambda slot: self.engine.held_prefix(prompt, slot.index))

    def _start(self, slot: _Slot, completion: Completion) -> None:
        """Evaluate the prompt (what the slot does not hold of it) and sample the first token."""
        slot.completion = completion
        try:
            limit = token_limit(self.n_ctx, len(completion.prompt), completion.max_tokens)
            if limit <= 0:
                self._emit(slot, GenerationChunk("", None, "length"))
                return
            slot.sampler = Sampler(completion.sampling)
            slot.text = CompletionText(self.engine.tokenizer, completion.stop, limit)
            slot.history = list(completion.prompt)
            started = time.perf_counter()
            logits, evaluated = self.engine.feed(completion.prompt, sequence=slot.index)
            completion.timings.prompt_ms = (time.perf_counter() - started) * 1000
            completion.timings.prompt_tokens = evaluated
            completion.cached_tokens = len(completion.prompt) - evaluated
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

    def _sample(self, slot: _Slot, logits) -> None:
        if slot.completion.ignore_eos:
            logits = logits.copy()
            logits[list(self.engine.tokenizer.eog_ids)] = -np.inf
        token = slot.sampler.sample(logits, slot.history)
        slot.history.append(token)
        chunk = slot.text.add(token)
        if chunk.token is not None:
            slot.completion.completion_tokens += 1
        self._emit(slot, chunk)

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
                completion.on_chunk(GenerationChunk("", None, "error"))
            except Exception:  # noqa: BLE001
                log.exception("a completion's receiver failed")
