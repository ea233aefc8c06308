"""The quality/speed table of docs/sparsity.md: CATS, TEAL, WINA (uniform and greedy allocations) and CHESS at 25/40/50%
on a model, in two separable passes over the same sparsity files in --out:

- quality (default): each file calibrated on the built-in corpus's training split, then held-out perplexity and
  KL to dense on its test split (4 chunks of 512 tokens, text not used for calibration);
- speed (`--speed-only`, or after the quality pass unless `--repetitions 0`): decode rates of the same engine dense
  (`Engine.every_neuron`) and sparse, alternating, over the files already in --out.

Each row is printed as it finishes and appended to --out/MODEL.quality.md (or .speed.md).

    PYTHONPATH=. .venv/bin/python tools/sparsity_table.py -m MODEL.gguf --out DIR [--tokens 1024] [--modes ...]
        [--repetitions 0 | --speed-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import hybridinfer
from hybridinfer.eval.benchmark import decode_rate
from hybridinfer.eval.perplexity import perplexity
from hybridinfer.sparsity.calibrate import calibrate_thresholds
from hybridinfer.sparsity.thresholds import save_thresholds
from hybridinfer.text.calibration import calibration_texts, token_chunks

MODES = ["cats", "teal", "wina", "teal-greedy", "wina-greedy", "chess"]  # METHOD[-ALLOCATION]
QUALITY_HEADER = ("| model | mode | calibration tokens | calibration s | held-out PPL (+change; dense) | KL to dense | "
                  "sparsity over that text |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")
SPEED_HEADER = ("| model | mode | decode sparsity | dense t/s | sparse t/s | sparse / dense |\n"
                "| --- | --- | ---: | ---: | ---: | ---: |")


def sparsity_path(out: Path, model: str, mode: str, target: float) -> Path:
    return out / f"{Path(model).name}.{mode}-{100 * target:g}.sparsity.gguf"


def quality_row(args, out: Path, target: float, mode: str, engine, chunks, held_out: str) -> str:
    """Calibrate one sparsity file and score it on the held-out text."""
    method, _, allocation = mode.partition("-")
    path = sparsity_path(out, args.model, mode, target)
    start = time.perf_counter()
    thresholds = calibrate_thresholds(engine, chunks, target, method, allocation=allocation or "uniform")
    save_thresholds(thresholds, path)
    seconds = time.perf_counter() - start
    sparse = hybridinfer.load(args.model, n_ctx=512, sparsity_file=str(path))
    scored = perplexity(sparse, held_out, 512, 4)
    change = 100 * (scored.perplexity / scored.dense_perplexity - 1)
    return (f"| {Path(args.model).name} | {mode} {100 * target:g}% | {thresholds.n_tokens} | {seconds:.0f} | "
            f"{scored.perplexity:.3f} ({change:+.1f}%; {scored.dense_perplexity:.3f}) | "
            f"{scored.kl_to_dense:.4f} | {100 * scored.sparsity:.1f}% |")


def speed_row(args, out: Path, target: float, mode: str) -> str:
    """Dense and sparse decode rates of one written sparsity file, alternating, medians."""
    path = sparsity_path(out, args.model, mode, target)
    if not path.exists():
        sys.exit(f"error: {path} is missing; run the quality pass (without --speed-only) first")
    sparse = hybridinfer.load(args.model, n_ctx=512, sparsity_file=str(path))
    dense_rates, sparse_rates, measured = [], [], []
    for _ in range(args.repetitions):
        with sparse.every_neuron():
            dense_rates.append(decode_rate(sparse, args.n_gen))
        sparse.sparse_ffn.stats.reset()
        sparse_rates.append(decode_rate(sparse, args.n_gen))
        measured.append(sparse.sparse_ffn.stats.sparsity(sparse.config.n_ff))
    d, s = statistics.median(dense_rates), statistics.median(sparse_rates)
    return (f"| {Path(args.model).name} | {mode} {100 * target:g}% | {100 * statistics.median(measured):.1f}% | "
            f"{d:.2f} | {s:.2f} | {s / d:.2f}x |")


def emit(row: str, log: Path) -> None:
    print(row, flush=True)
    with log.open("a") as file:
        file.write(row + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--out", required=True, help="folder for the sparsity files and the rows")
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens")
    parser.add_argument("--targets", default="0.25,0.4,0.5")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repetitions", type=int, default=2, help="dense/sparse decode pairs (0: no speed pass)")
    parser.add_argument("--n-gen", type=int, default=16)
    parser.add_argument("--speed-only", action="store_true", help="only the decode rates of the files in --out")
    args = parser.parse_args()
    targets, modes = [float(t) for t in args.targets.split(",")], args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        sys.exit(f"error: unknown modes {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    if args.speed_only and args.repetitions < 1:
        sys.exit("error: --speed-only needs --repetitions 1 or more")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.model).name
    if not args.speed_only:
        engine = hybridinfer.load(args.model, n_ctx=256)
        chunks = token_chunks(engine.tokenizer, calibration_texts(None), args.tokens, 256)
        held_out = "\n\n".join(calibration_texts(None, "test"))
        log = out / f"{name}.quality.md"
        emit(QUALITY_HEADER, log)
        for target in targets:
            for mode in modes:
                emit(quality_row(args, out, target, mode, engine, chunks, held_out), log)
    if args.repetitions > 0:
        log = out / f"{name}.speed.md"
        emit(SPEED_HEADER, log)
        for target in targets:
            for mode in modes:
                emit(speed_row(args, out, target, mode), log)


if __name__ == "__main__":
    main()
