"""The quality/speed table of docs/sparsity.md: CATS, TEAL and WINA (uniform and greedy allocations) at 25/40/50%
on a model, in one process: each sparsity file calibrated on the built-in corpus's training split, then held-out
perplexity and KL to dense on its test split (4 chunks of 512 tokens, text not used for calibration) and decode
rates of the same engine dense (`Engine.every_neuron`) and sparse, alternating.

    PYTHONPATH=. .venv/bin/python tools/sparsity_table.py -m MODEL.gguf --out DIR [--tokens 1024] [--modes ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import hybridinfer
from hybridinfer.eval.benchmark import decode_rate
from hybridinfer.eval.perplexity import perplexity
from hybridinfer.sparsity.calibrate import calibrate_thresholds
from hybridinfer.sparsity.thresholds import save_thresholds
from hybridinfer.text.calibration import calibration_texts, token_chunks

MODES = ["cats", "teal", "wina", "teal-greedy", "wina-greedy"]  # METHOD[-ALLOCATION]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--out", required=True, help="folder for the sparsity files")
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens")
    parser.add_argument("--targets", default="0.25,0.4,0.5")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repetitions", type=int, default=2, help="dense/sparse decode pairs")
    parser.add_argument("--n-gen", type=int, default=16)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = hybridinfer.load(args.model, n_ctx=256)
    chunks = token_chunks(engine.tokenizer, calibration_texts(None), args.tokens, 256)
    held_out = "\n\n".join(calibration_texts(None, "test"))
    name = Path(args.model).name
    print(f"| model | mode | calibration s | decode sparsity | dense t/s | sparse t/s | sparse / dense | "
          f"held-out PPL (dense) | KL to dense | sparsity over that text |\n"
          f"| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for target in map(float, args.targets.split(",")):
        for mode in args.modes.split(","):
            method, _, allocation = mode.partition("-")
            path = out / f"{name}.{mode}-{100 * target:g}.sparsity.gguf"
            start = time.perf_counter()
            save_thresholds(calibrate_thresholds(engine, chunks, target, method, allocation=allocation or "uniform"),
                            path)
            seconds = time.perf_counter() - start
            sparse = hybridinfer.load(args.model, n_ctx=512, sparsity_file=str(path))
            dense_rates, sparse_rates, measured = [], [], []
            for _ in range(args.repetitions):
                with sparse.every_neuron():
                    dense_rates.append(decode_rate(sparse, args.n_gen))
                sparse.sparse_ffn.stats.reset()
                sparse_rates.append(decode_rate(sparse, args.n_gen))
                measured.append(sparse.sparse_ffn.stats.sparsity(sparse.config.n_ff))
            scored = perplexity(sparse, held_out, 512, 4)
            d, s = statistics.median(dense_rates), statistics.median(sparse_rates)
            change = 100 * (scored.perplexity / scored.dense_perplexity - 1)
            print(f"| {name} | {sparse.mode}{' greedy' if allocation else ''} | {seconds:.0f} | "
                  f"{100 * statistics.median(measured):.1f}% | {d:.2f} | {s:.2f} | {s / d:.2f}x | "
                  f"{scored.perplexity:.3f} ({change:+.1f}%; {scored.dense_perplexity:.3f}) | "
                  f"{scored.kl_to_dense:.4f} | {100 * scored.sparsity:.1f}% |", flush=True)
            del sparse


if __name__ == "__main__":
    main()
