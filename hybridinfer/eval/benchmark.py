"""llama-bench style measurements: prompt processing (pp) and token generation (tg) rates of an engine."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from ..engine import Engine
from ..hybrid.report import hybrid_report

BENCH_TEXT = ("Once upon a time, in a small village by the sea, there lived an old fisherman who told stories "
              "about the stars, the tides and the ships that never came back. ") * 40


@dataclass
class BenchResult:
    test: str  # "pp64", "tg32"
    tokens_per_second: float  # median over the repetitions
    samples: list[float]
    hybrid: dict | None = None
    sparsity: float | None = None  # sparse modes: share of FFN activations that were zero while decoding

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_tokens(engine: Engine, n: int) -> list[int]:
    tokens = engine.tokenize(BENCH_TEXT)
    while len(tokens) < n:
        tokens += tokens[1:]
    return tokens[:n]


def prompt_rate(engine: Engine, n_prompt: int) -> float:
    tokens = prompt_tokens(engine, n_prompt)
    engine.reset()
    start = time.perf_counter()
    engine.feed(tokens)
    return n_prompt / (time.perf_counter() - start)


def decode_rate(engine: Engine, n_gen: int, n_prompt: int = 8, warmup: int = 2) -> float:
    """Greedy decode rate (no sampling, as llama-bench) after `warmup` tokens; hybrid statistics restart
    after the warm-up so the report covers the timed tokens only."""
    history = prompt_tokens(engine, n_prompt)
    engine.reset()
    logits, _ = engine.feed(history)
    for _ in range(warmup):
        history.append(int(logits.argmax()))
        logits, _ = engine.feed(history)
    if engine.gpu_side is not None:
        engine.gpu_side.stats.reset()
    sparse = engine.sparse_ffn
    if sparse is not None:
        sparse.stats.reset()
    start = time.perf_counter()
    for _ in range(n_gen):
        history.append(int(logits.argmax()))
        logits, _ = engine.feed(history)
    return n_gen / (time.perf_counter() - start)


def run_bench(engine: Engine, n_prompt: int = 64, n_gen: int = 32, repetitions: int = 3) -> list[BenchResult]:
    results = []
    if n_prompt > 0:
        prompt_rate(engine, min(n_prompt, 8))  # warm-up
        samples = [prompt_rate(engine, n_prompt) for _ in range(repetitions)]
        results.append(BenchResult(f"pp{n_prompt}", statistics.median(samples), samples))
    if n_gen > 0:
        samples = [decode_rate(engine, n_gen) for _ in range(repetitions)]
        sparse = engine.sparse_ffn
        sparsity = sparse.stats.sparsity(engine.config.n_ff) if sparse is not None else None
        results.append(BenchResult(f"tg{n_gen}", statistics.median(samples), samples, hybrid_report(engine), sparsity))
    return results
