"""`make bench`: decode and prompt speed of the engine's setups, llama-bench style, in one run.

Sections (each printed as a table; numbers are medians of repeated runs on this machine):
  1. the default model (SmolLM2-135M, SiLU): dense
  2. a ProSparse-7B-shaped synthetic checkpoint (7B layer shapes, --layers of the 32 layers, FATReLU with
     gate biases so that ~80-90% of neurons are silent): dense vs --exact vs the hybrid runtime at several
     budgets, the CPU device standing in for the GPU
  3. the ProSparse-recipe reference model, when built (`make reference-model`): the same comparison

Usage: PYTHONPATH=. python tools/bench.py [--layers 4] [-n 16] [-r 3] [--skip-7b]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import hybridinfer
from hybridinfer.benchmark import run_bench
from hybridinfer.calibration import calibration_texts, token_chunks
from hybridinfer.convert import convert_checkpoint
from hybridinfer.default_model import ensure_default_model
from hybridinfer.profiling import profile_activations, save_profile

REFERENCE_GGUF = Path("models/prosparse-tiny.gguf")
REFERENCE_PREDICTORS = Path("models/prosparse-tiny.pred.gguf")


def row(label: str, mode: str, results) -> None:
    for result in results:
        extra = ""
        if result.hybrid:
            h = result.hybrid
            extra = (f"{100 * h['cpu_ffn_share']:.0f}%/{100 * h['gpu_ffn_share']:.0f}% CPU/GPU; attention "
                     f"{h['attention_ms_per_token']:.1f} ms, GPU FFN {h['gpu_ffn_ms_per_token']:.1f} ms, "
                     f"CPU FFN {h['cpu_ffn_ms_per_token']:.1f} ms per token")
        print(f"| {label} | {mode} | {result.test} | {result.tokens_per_second:.2f} | {extra} |")


def header(title: str) -> None:
    print(f"\n{title}\n\n| model | mode | test | t/s | hybrid split |\n| --- | --- | --- | ---: | --- |")


def compare_modes(path: str, label: str, args, predictors: str | None = None) -> None:
    """Dense, --exact, --predictors (when given) and the hybrid runtime at 0 / half / all of the FFN."""
    dense = hybridinfer.load(path, n_ctx=256)
    row(label, "dense", run_bench(dense, args.n_prompt, args.n_gen, args.repetitions))
    activations = Path(tempfile.mkdtemp()) / "model.act.gguf"
    chunks = token_chunks(dense.tokenizer, calibration_texts(None, "validation"), 2048, 128)
    save_profile(profile_activations(dense, chunks), activations)
    ffn_bytes = dense.config.n_layer * dense.config.n_ff * 3 * dense.config.n_embd * 4
    del dense
    row(label, "exact", run_bench(hybridinfer.load(path, n_ctx=256, exact=True), 0, args.n_gen, args.repetitions))
    if predictors:
        engine = hybridinfer.load(path, n_ctx=256, predictors=predictors)
        row(label, "predictors", run_bench(engine, 0, args.n_gen, args.repetitions))
    probe = hybridinfer.load(path, n_ctx=256, vram_budget="1TiB", activations=str(activations), device="cpu")
    fixed = probe.split.fixed_bytes
    del probe
    for share in (0.0, 0.5, 1.0):
        budget = 0 if share == 0 else int(fixed + share * ffn_bytes) + 1
        engine = hybridinfer.load(path, n_ctx=256, vram_budget=str(budget), activations=str(activations),
                                  device="cpu", predictors=predictors)
        mode = f"hybrid, {'all CPU' if share == 0 else f'{int(100 * share)}% of FFN bytes on GPU side'}"
        row(label, mode + (" + predictors" if predictors else ""), run_bench(engine, 0, args.n_gen, args.repetitions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--n-prompt", type=int, default=64)
    parser.add_argument("-n", "--n-gen", type=int, default=16)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4, help="layers of the 7B-shaped model (32 in the real one)")
    parser.add_argument("--skip-7b", action="store_true")
    args = parser.parse_args()

    header("1. default model")
    smollm = hybridinfer.load(str(ensure_default_model(progress=print)), n_ctx=256)
    row("SmolLM2-135M Q4_1", "dense", run_bench(smollm, args.n_prompt, args.n_gen, args.repetitions))
    del smollm

    if not args.skip_7b:
        from tools.synth_checkpoint import synthesize
        header(f"2. ProSparse-7B-shaped synthetic model ({args.layers} of 32 layers, F16 file), CPU device as GPU")
        with tempfile.TemporaryDirectory() as scratch:
            shape = {"num_hidden_layers": args.layers, "gate_bias": -1.2}
            hf_dir = synthesize(Path(scratch) / "hf", "prosparse-llama-2-7b", size="full", overrides=shape,
                                progress=False)
            gguf_path = convert_checkpoint(hf_dir, Path(scratch) / "7b.gguf", outtype="f16").output
            compare_modes(gguf_path, f"7B-shaped x{args.layers}", args)

    if REFERENCE_GGUF.exists():
        header("3. ProSparse-recipe reference model")
        predictors = str(REFERENCE_PREDICTORS) if REFERENCE_PREDICTORS.exists() else None
        compare_modes(str(REFERENCE_GGUF), "reference", args, predictors)
    else:
        print(f"\n3. reference model: {REFERENCE_GGUF} not built (make reference-model)")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
