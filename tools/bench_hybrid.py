"""`make bench`, section 5: the hybrid runtime on the 7B-shaped model with its predictors, per GPU memory budget,
next to llama.cpp-style -ngl dense layer offload at the same budget and to the packed CPU engine.

Each configuration runs in its own process (`hybridinfer bench --json`), so that its peak RSS is its own. Without
a GPU the GPU side runs on the CPU device with the torch twins: its time then says nothing about a GPU, so the
table's figure of merit is the CPU side's own ms per token (the critical path once the GPU side is fast) and the
tokens/s it implies. The CPU side's time there includes the cores the stand-in GPU side takes from it.

Usage: PYTHONPATH=. python tools/bench_hybrid.py [--model M.gguf] [--budgets 0,1GiB,2GiB] [-n 16] [-t 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.hybrid.placement.plan import gpu_layers_for
from hybridinfer.hybrid.placement.sizes import parse_size

N_CTX = 256
RSS_MARGIN = 1.5e9  # the allowance over the model and predictor files


def run(model: Path, options: list[str], n_gen: int, repetitions: int, threads: int) -> dict:
    command = [sys.executable, "-m", "hybridinfer", "bench", "-m", str(model), "-p", "0", "-n", str(n_gen), "-r",
               str(repetitions), "-c", str(N_CTX), "-t", str(threads), "--json", *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gpu_layers_for_file(model: Path, budget: int) -> int:
    """The -ngl that fits `budget` on the CPU device (memory model without predictors: -ngl runs dense)."""
    file = GGUFFile(model)
    return gpu_layers_for(memory_model(file, ModelConfig.from_gguf(file), N_CTX, "cpu"), budget)


def tg(result: dict) -> dict:
    return next(r for r in result["results"] if r["test"].startswith("tg"))


def row(label: str, budget: str, result: dict, limit: float) -> None:
    t = tg(result)
    h = t.get("hybrid") or {}
    cpu_ms = h.get("cpu_ms_per_token")
    rss = result["peak_rss_bytes"]
    print(f"| {label} | {budget} | {t['tokens_per_second']:.2f} | "
          f"{f'{cpu_ms:.1f}' if cpu_ms is not None else '-'} | "
          f"{f'{1000 / cpu_ms:.2f}' if cpu_ms else '-'} | {h.get('gpu_layers', 0)} | {h.get('hot_neurons', 0)} | "
          f"{100 * h.get('gpu_ffn_share', 0):.0f}% | {rss / 1e9:.2f} | {limit / 1e9:.2f} |", flush=True)


def section(model: Path, predictors: Path, budgets: list[str], n_gen: int, repetitions: int, threads: int) -> None:
    files = model.stat().st_size + predictors.stat().st_size
    print(f"\n## 5. hybrid runtime, {model.name} with {predictors.name} (files {files / 1e9:.2f} GB)\n")
    print("GPU side on the CPU device (torch twins) here: `tok/s` is the whole stand-in's rate; `CPU ms` is the "
          "CPU side's own time per token and `CPU-bound tok/s` the rate it implies once the GPU side is fast. "
          f"RSS limit: files + {RSS_MARGIN / 1e9:.1f} GB (+ the budget: the GPU side's memory is this machine's).\n")
    print("| mode | budget | tok/s | CPU ms | CPU-bound tok/s | GPU layers | hot neurons | GPU FFN share | "
          "peak RSS GB | RSS limit GB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    base = ["--predictors", str(predictors)]
    ratios = []
    for _ in range(3):  # side by side, alternating: the machine's speed drifts
        packed = run(model, base, n_gen, repetitions, threads)
        at_zero = run(model, base + ["--vram-budget", "0", "--device", "cpu"], n_gen, repetitions, threads)
        row("packed --predictors", "-", packed, files + RSS_MARGIN)
        row("hybrid --predictors", "0", at_zero, files + RSS_MARGIN)
        ratios.append(tg(at_zero)["tokens_per_second"] / tg(packed)["tokens_per_second"])
    for budget in budgets:
        if parse_size(budget) == 0:
            continue
        limit = files + RSS_MARGIN + parse_size(budget)
        row("hybrid --predictors", budget, run(model, base + ["--vram-budget", budget, "--device", "cpu"], max(
            4, n_gen // 4), 1, threads), limit)
        n = gpu_layers_for_file(model, parse_size(budget))
        if n:
            row(f"-ngl {n} (dense)", budget, run(model, ["-ngl", str(n), "--device", "cpu"], max(4, n_gen // 4), 1,
                                                 threads), limit)
    print(f"\nbudget 0 against packed --predictors, pair by pair: {', '.join(f'{r:.3f}' for r in ratios)}; median "
          f"{statistics.median(ratios):.3f}x (target >= 0.95x)", flush=True)


def main() -> None:
    from tools.build_bench_model import DEFAULT_OUT, activations_path, paths
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--budgets", default="0,1GiB,2GiB")
    parser.add_argument("-n", "--n-gen", type=int, default=16)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    model, predictors = paths(DEFAULT_OUT) if args.model is None else \
        (args.model, args.model.with_name(args.model.name.replace(".gguf", ".pred.gguf")))
    activations = activations_path(model)
    if not (model.exists() and predictors.exists() and activations.exists()):
        print(f"\n## 5. hybrid runtime\n\nneeds {model}, {predictors} and {activations}: `make bench-model`")
        return
    section(model, predictors, args.budgets.split(","), args.n_gen, args.repetitions, args.threads)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
