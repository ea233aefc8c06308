"""Aggregate decode rate of N sequences decoded together (`hybridinfer bench --parallel`, `make bench`): what
`hybridinfer serve --parallel N` sustains once N requests are running.

Per N: N completions of distinct prompts start together in `serve/scheduler.py`'s slots (greedy, end-of-text
never sampled, as llama.cpp's `ignore_eos`), and the rate is the tokens of the decoding steps over their time
(each step evaluates one token of every sequence; the prompts' evaluation is not counted), the loop on the
main thread as in `serve`. Median of the repetitions.
"""

from __future__ import annotations

import statistics
import threading

from ..engine import Engine
from ..generation.sampling import SamplerSettings
from ..serve.scheduler import Completion, Scheduler
from .benchmark import prompt_tokens

PROMPT_TOKENS = 16


def context_for(counts: list[int], n_gen: int) -> int:
    """The engine's -c that gives each of max(counts) slots room for a prompt and n_gen tokens."""
    return max(counts) * (PROMPT_TOKENS + n_gen + 8)


def parallel_rate(engine: Engine, n: int, n_gen: int, repetitions: int) -> tuple[float, list[float]]:
    """(median tokens/s, samples) of n sequences decoding n_gen tokens each, together."""
    text = prompt_tokens(engine, PROMPT_TOKENS * (n + 1))
    samples = []
    scheduler = Scheduler(engine, n_parallel=n, start=False)  # decoding on this thread, as `serve` does
    try:
        for _ in range(repetitions):
            engine.reset()  # no slot holds a prefix: every repetition evaluates its prompts
            done = [threading.Event() for _ in range(n)]
            before_tokens, before_seconds = scheduler.stats.tokens, scheduler.stats.seconds
            for i in range(n):
                prompt = text[:1] + text[1 + i * PROMPT_TOKENS:(i + 1) * PROMPT_TOKENS]  # distinct, BOS first
                finished = done[i]
                scheduler.submit(Completion(prompt, n_gen, [], SamplerSettings(temperature=0),
                                            lambda chunk, e=finished: chunk.finish_reason and e.set(),
                                            ignore_eos=True))
            scheduler.run(until=lambda: all(event.is_set() for event in done))
            tokens = scheduler.stats.tokens - before_tokens
            samples.append(tokens / (scheduler.stats.seconds - before_seconds))
    finally:
        scheduler.close()
        engine.hold_sequences(1)
    return statistics.median(samples), samples


def parallel_rates(engine: Engine, counts: list[int], n_gen: int, repetitions: int) -> list[dict]:
    """One record per N: n, tokens_per_second (aggregate), per_sequence, speedup over the first N, samples."""
    records = []
    for n in counts:
        rate, samples = parallel_rate(engine, n, n_gen, repetitions)
        records.append({"n": n, "tokens_per_second": rate, "per_sequence": rate / n, "samples": samples})
    for record in records:
        record["speedup"] = record["tokens_per_second"] / records[0]["tokens_per_second"]
    return records
