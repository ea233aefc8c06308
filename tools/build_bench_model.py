"""Build the 7B-shaped benchmark model: a synthetic ProSparse-LLaMA-2-7B with ProSparse-like activation
statistics (docs/synthetic-7b.md), converted to Q4_0, and predictors trained for it with the normal CLI.

Steps (each skipped when its output exists, so an interrupted build resumes):
  1. synthesize the fp32 checkpoint (27 GB, in a scratch directory beside the output, deleted after step 2)
  2. `hybridinfer convert --outtype q4_0`                          -> OUT.q4_0.gguf (~3.9 GB)
  3. `hybridinfer predictors train --method ridge --rank R --tokens N` -> OUT.q4_0.pred.gguf
  4. `hybridinfer profile --tokens 1024`                               -> OUT.q4_0.act.gguf (for --vram-budget)
  5. its SiLU variant (tools/silu_variant.py: same tensors, SiLU FFN)  -> OUT.silu.q4_0.gguf
  6. `hybridinfer sparsify --tokens 1024 --sparsity S --method M` for each S of SPARSITY_TARGETS and M of
     SPARSITY_METHODS                                 -> OUT.silu.q4_0.{cats,teal}-{25,40,50}.sparsity.gguf

Usage: PYTHONPATH=. python tools/build_bench_model.py [--out ~/.cache/hybridinfer/bench/synthetic-prosparse-7b]
           [--layers 32] [--rank 256] [--tokens 4096] [--method ridge|sgd]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(os.environ.get("HYBRIDINFER_CACHE", Path.home() / ".cache" / "hybridinfer")) / "bench" / \
    "synthetic-prosparse-7b"


def paths(out: Path) -> tuple[Path, Path]:
    """(model, predictors) of a build written to `out` (a path prefix); the activations file is
    `activations_path(model)`."""
    return out.with_name(out.name + ".q4_0.gguf"), out.with_name(out.name + ".q4_0.pred.gguf")


def activations_path(model: Path) -> Path:
    return model.with_name(model.name.replace(".gguf", ".act.gguf"))


SPARSITY_TARGETS = (0.25, 0.4, 0.5)  # the sparsity files made for the SiLU variant, per method
SPARSITY_METHODS = ("cats", "teal")


def silu_paths(out: Path) -> tuple[Path, dict[tuple[str, float], Path]]:
    """(the SiLU variant, its sparsity file per (method, target)) of a build written to `out`."""
    model = out.with_name(out.name + ".silu.q4_0.gguf")
    return model, {(m, t): sparsity_path(model, t, m) for m in SPARSITY_METHODS for t in SPARSITY_TARGETS}


def sparsity_path(model: Path, target: float, method: str) -> Path:
    from hybridinfer.sparsity.thresholds import path_beside
    return Path(path_beside(model, target, method))


def step(title: str, command: list[str]) -> None:
    print(f"== {title}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"== {title}: {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output path prefix")
    parser.add_argument("--layers", type=int, default=32, help="layers (32 in LLaMA-2-7B)")
    parser.add_argument("--rank", type=int, default=256, help="predictor rank")
    parser.add_argument("--tokens", type=int, default=4096, help="predictor training tokens")
    parser.add_argument("--method", default="ridge", choices=["ridge", "sgd"],
                        help="predictor fit (ridge: measured better at 4096 tokens on this model, docs/synthetic-7b.md)")
    args = parser.parse_args()
    model, predictors = paths(args.out)
    model.parent.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "hybridinfer"]
    if not model.exists():
        scratch = args.out.with_name(args.out.name + ".hf")
        if not (scratch / "config.json").exists():
            from tools.synth_checkpoint import synthesize
            start = time.perf_counter()
            shutil.rmtree(scratch, ignore_errors=True)
            synthesize(scratch, "prosparse-llama-2-7b", size="full", progress=True,
                       overrides={"sparsity_profile": "prosparse", "num_hidden_layers": args.layers})
            print(f"== synthesize: {time.perf_counter() - start:.0f} s", flush=True)
        step("convert", cli + ["convert", str(scratch), "-o", str(model), "--outtype", "q4_0"])
        shutil.rmtree(scratch)
    if not predictors.exists():
        step("predictors", cli + ["predictors", "train", "-m", str(model), "--method", args.method, "--rank",
                                  str(args.rank), "--tokens", str(args.tokens), "-o", str(predictors)])
    activations = activations_path(model)
    if not activations.exists():
        step("profile", cli + ["profile", "-m", str(model), "--tokens", "1024", "-o", str(activations)])
    silu, sparsity_files = silu_paths(args.out)
    if not silu.exists():
        from tools.silu_variant import write_silu_variant
        start = time.perf_counter()
        write_silu_variant(str(model), str(silu))
        print(f"== SiLU variant: {time.perf_counter() - start:.0f} s", flush=True)
    for (method, target), path in sparsity_files.items():
        if not path.exists():
            step(f"sparsify {method} {target}", cli + ["sparsify", "-m", str(silu), "--method", method, "--tokens",
                                                       "1024", "--held-out-tokens", "512", "--sparsity", str(target),
                                                       "-o", str(path)])
    print(f"model: {model}\npredictors: {predictors}\nactivations: {activations}\nSiLU variant: {silu}")


if __name__ == "__main__":
    main()
