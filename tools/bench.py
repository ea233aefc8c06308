"""Decode benchmark: tokens/s of prompt processing and generation on a GGUF model (default: SmolLM2-135M).

Usage: python tools/bench.py [-m MODEL] [-p PROMPT_TOKENS] [-n GEN_TOKENS] [-r REPEATS]
Prints a llama-bench style table with the median of the repeats (after one warm-up run).
"""

from __future__ import annotations

import argparse
import statistics

import hybridinfer
from hybridinfer.default_model import ensure_default_model
from hybridinfer.generate import Timings


def run_once(engine: hybridinfer.Engine, prompt_tokens: int, gen_tokens: int) -> Timings:
    engine.reset()
    text = "Once upon a time, in a small village by the sea, there lived an old fisherman. " * 8
    prompt = engine.tokenize(text)[:prompt_tokens]
    timings = Timings()
    for _ in engine.stream(prompt, max_tokens=gen_tokens, timings=timings, temperature=0.0):
        pass
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("-p", "--n-prompt", type=int, default=64)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    args = parser.parse_args()
    path = args.model or str(ensure_default_model(progress=print))
    engine = hybridinfer.load(path, n_ctx=512)
    run_once(engine, 8, 4)  # warm-up
    runs = [run_once(engine, args.n_prompt, args.n_gen) for _ in range(args.repetitions)]
    name = engine.file.get("general.name", path)
    print(f"| model | path | test | tokens/s (median of {args.repetitions}) |")
    print("| --- | --- | --- | ---: |")
    print(f"| {name} | reference (torch f32) | pp{args.n_prompt} | {statistics.median(r.prompt_tps for r in runs):.2f} |")
    print(f"| {name} | reference (torch f32) | tg{args.n_gen} | {statistics.median(r.eval_tps for r in runs):.2f} |")


if __name__ == "__main__":
    main()
