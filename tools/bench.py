"""`make bench`: the CPU kernels against this machine's memory bandwidth, and decode speed of the engine next to
llama.cpp's on the same files, llama-bench style, in one run.

Sections (medians of repeated runs; the machine's bandwidths are measured in the same run):
  1. kernels at 7B layer shapes: sequential and random-row read bandwidth, each dense kernel's GB/s and share
     of the sequential bandwidth, sparse kernels at active fractions 0.5 / 0.2 / 0.1 against the random-row
     bandwidth (weights rotated over a pool much larger than L3, a fresh active set per call)
  2. the default model (SmolLM2-135M Q4_1): packed backend, reference backend, llama.cpp when
     llama-cpp-python is installed (`pip install -e '.[llama]'`), and the per-token overhead of the layer loop
  3. the 7B-shaped synthetic ProSparse model (`make bench-model`, docs/synthetic-7b.md): dense, --exact and
     --predictors, llama.cpp's dense decode of the same file, and the ratios
  4. the ProSparse-recipe reference model in models/: dense, --exact, --predictors
  5. the hybrid runtime on the 7B-shaped model (`tools/bench_hybrid.py`): per GPU budget the CPU side's own ms
     per token and the tokens/s it implies, beside -ngl at the same budget; peak RSS of each configuration
  6. start-up (`tools/bench_startup.py`): a new process to its first token, first start (repacking) and second
     (mapping the repack cache), with the start-up breakdown and peak RSS
  7. parallel sequences (`eval/parallel_bench.py`, what `serve --parallel N` sustains): aggregate decode rate at
     1, 2, 4 and 8 sequences decoded together, SmolLM2 dense and the 7B-shaped model dense and --predictors
  8. CATS and TEAL sparsity files on SiLU models: SmolLM2 and the 7B-shaped SiLU variant at 0, 25, 40 and 50%
     target sparsity: decode rate next to dense and llama.cpp's dense decode of the same file, measured sparsity,
     and SmolLM2's held-out perplexity and KL to dense
  9. instruction sets (`tools/bench_targets.py`): the dense int8 kernels and decode rates of this machine's build
     next to the AVX2 build (HYBRIDINFER_CPU=avx2, a desktop CPU without AVX-512) and the generic one (ARM)
 10. K-quant files (`tools/bench_kquants.py`): SmolLM2 and the 7B-shaped model as Q4_K_M (llama.cpp's quantizer),
     dense and --predictors next to llama.cpp's dense decode, peak RSS, and the KL to llama.cpp's distributions

Usage: PYTHONPATH=. python tools/bench.py [-n 16] [-r 3] [-t 2] [--pool-mb 512] [--skip-kernels] [--model-7b PATH]
       [--only 3,7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numba
import torch

import hybridinfer
from hybridinfer.eval import kernel_bench, llamacpp_reference
from hybridinfer.eval.benchmark import decode_rate, run_bench
from hybridinfer.default_model import ensure_default_model
from tools import bench_startup
from tools.build_bench_model import DEFAULT_OUT, paths

REFERENCE_GGUF = Path("models/prosparse-tiny.q8_0.gguf")
REFERENCE_PREDICTORS = Path("models/prosparse-tiny.pred.gguf")


def header(title: str) -> None:
    print(f"\n## {title}\n\n| model | mode | test | t/s | notes |\n| --- | --- | --- | ---: | --- |", flush=True)


def row(label: str, mode: str, test: str, rate: float, notes: str = "") -> None:
    print(f"| {label} | {mode} | {test} | {rate:.2f} | {notes} |", flush=True)


def bench_engine(label: str, mode: str, engine, args, n_prompt: int = 0) -> float:
    """Rows for pp (when n_prompt) and tg; returns the tg rate."""
    results = run_bench(engine, n_prompt, args.n_gen, args.repetitions)
    rate = 0.0
    for result in results:
        notes = ""
        sparse = engine.sparse_ffn
        if result.test.startswith("tg"):
            rate = result.tokens_per_second
            if sparse is not None and sparse.stats.tokens:
                s, n_ff = sparse.stats, engine.config.n_ff
                notes = (f"per layer and token: {s.rows / s.tokens / n_ff:.1%} of neurons read, "
                         f"{s.active / s.tokens / n_ff:.1%} fired")
        row(label, mode, result.test, result.tokens_per_second, notes)
    return rate


LLAMA_CPP_MISSING = "not installed: pip install -e '.[llama]'"


def llama_cpp_rows(label: str, path: str, args, ours: dict[str, float]) -> None:
    if not llamacpp_reference.available():
        row(label, "llama.cpp", f"tg{args.n_gen}", 0.0, LLAMA_CPP_MISSING)
        return
    for threads in sorted({args.threads, 1}, reverse=True):
        mode, rate = llama_cpp_decode(path, threads, args)
        ratios = ours_over(ours, rate) if threads == args.threads else \
            "(one thread: llama.cpp's spinning threads suffer most on a busy machine)"
        row(label, mode, f"tg{args.n_gen}", rate, ratios)


def llama_cpp_decode(path: str, threads: int, args) -> tuple[str, float]:
    """(the mode column, tokens/s) of llama.cpp's dense decode of `path`."""
    reference = llamacpp_reference.decode_rate(path, n_threads=threads, n_gen=args.n_gen,
                                               repetitions=args.repetitions)
    return f"llama.cpp {reference['version']} dense, -t {threads}", reference["tokens_per_second"]


def ours_over(ours: dict[str, float], rate: float) -> str:
    return "ours / llama.cpp: " + ", ".join(f"{mode}: {value / rate:.2f}x" for mode, value in ours.items())


def layer_loop_overhead(n_layer: int, args) -> float:
    """ms per token of the packed decode loop on a model with `n_layer` layers of negligible width: what
    Python, numba dispatch and thread launches cost, without the weight reading."""
    from tests.tiny_models import random_weights, write_tiny_gguf
    with tempfile.TemporaryDirectory() as scratch:
        path = write_tiny_gguf(Path(scratch) / "loop.gguf", random_weights(n_layer=n_layer, n_embd=64, n_ff=128),
                               context_length=256)
        engine = hybridinfer.load(str(path), n_ctx=256)
        samples = [decode_rate(engine, 64) for _ in range(args.repetitions)]
    return 1000 / statistics.median(samples)


def kernels(args) -> None:
    print("## 1. CPU kernels at 7B layer shapes\n", flush=True)
    start = time.perf_counter()
    machine, results = kernel_bench.run(args.threads, args.pool_mb, 7, 2, args.formats.split(","))
    kernel_bench.print_table(machine, results, args.threads)
    print(f"({time.perf_counter() - start:.0f} s)")


def default_model(args) -> None:
    header("2. default model")
    path = str(ensure_default_model(progress=print))
    label = "SmolLM2-135M Q4_1"
    ours = {"packed": bench_engine(label, "dense, packed", hybridinfer.load(path, n_ctx=256), args, 64)}
    bench_engine(label, "dense, reference (torch f32)", hybridinfer.load(path, n_ctx=256, backend="reference"), args)
    llama_cpp_rows(label, path, args, ours)
    n_layer = hybridinfer.load(path, n_ctx=16).config.n_layer
    overhead = layer_loop_overhead(n_layer, args)
    print(f"\nlayer loop overhead (Python, numba dispatch, thread launches; {n_layer} layers of width 64): "
          f"{overhead:.2f} ms per token = {1000 * overhead / n_layer:.0f} us per layer; "
          f"{overhead * ours['packed'] / 10:.0f}% of a SmolLM2 token", flush=True)


def synthetic_7b(args) -> None:
    model, predictors = paths(DEFAULT_OUT) if args.model_7b is None else (Path(args.model_7b), None)
    if args.model_7b and Path(args.model_7b.replace(".gguf", ".pred.gguf")).exists():
        predictors = Path(args.model_7b.replace(".gguf", ".pred.gguf"))
    if not model.exists():
        print(f"\n## 3. 7B-shaped synthetic ProSparse model\n\n{model} not built: `make bench-model` "
              "(~30 min, 31 GB of scratch disk)")
        return
    header(f"3. 7B-shaped synthetic ProSparse model, Q4_0 ({model.name})")
    label = "synthetic ProSparse-7B Q4_0"
    engine = hybridinfer.load(str(model), n_ctx=256)
    print(f"(load {engine.load_ms / 1000:.1f} s, of which repacking {engine.repack_ms / 1000:.1f} s)")
    ours = {"dense": bench_engine(label, "dense", engine, args)}
    del engine
    engine = hybridinfer.load(str(model), n_ctx=256, exact=True)
    print(f"(load {engine.load_ms / 1000:.1f} s, of which repacking and transposing the down projection "
          f"{engine.repack_ms / 1000:.1f} s)")
    ours["exact"] = bench_engine(label, "--exact", engine, args)
    del engine
    if predictors is not None and predictors.exists():
        engine = hybridinfer.load(str(model), n_ctx=256, predictors=str(predictors))
        ours["predictors"] = bench_engine(label, "--predictors", engine, args)
        print(f"(predictors: {engine.sparse_ffn.nbytes_predictors / 1e6:.0f} MB read per token as Q8_0; "
              f"load {engine.load_ms / 1000:.1f} s)")
        del engine
    llama_cpp_rows(label, str(model), args, ours)


def reference_model(args) -> None:
    if not REFERENCE_GGUF.exists():
        return
    header("4. ProSparse-recipe reference model")
    label, path = "prosparse-tiny Q8_0", str(REFERENCE_GGUF)
    bench_engine(label, "dense", hybridinfer.load(path, n_ctx=256), args)
    bench_engine(label, "--exact", hybridinfer.load(path, n_ctx=256, exact=True), args)
    if REFERENCE_PREDICTORS.exists():
        bench_engine(label, "--predictors", hybridinfer.load(path, n_ctx=256, predictors=str(REFERENCE_PREDICTORS)),
                     args)


def hybrid_7b(args) -> None:
    from tools import bench_hybrid
    from tools.build_bench_model import activations_path
    model, predictors = paths(DEFAULT_OUT) if args.model_7b is None else \
        (Path(args.model_7b), Path(args.model_7b.replace(".gguf", ".pred.gguf")))
    if not (model.exists() and predictors.exists() and activations_path(model).exists()):
        print(f"\n## 5. hybrid runtime\n\nneeds {model}, its predictors and activations: `make bench-model`")
        return
    bench_hybrid.section(model, predictors, ["0", "1GiB", "2GiB"], args.n_gen, args.repetitions, args.threads)


def startup(args) -> None:
    bench_startup.header()
    bench_startup.section("SmolLM2-135M Q4_1", ensure_default_model())
    model, predictors = paths(DEFAULT_OUT) if args.model_7b is None else (Path(args.model_7b), None)
    if model.exists():
        bench_startup.section("synthetic ProSparse-7B Q4_0", model,
                              predictors if predictors is not None and predictors.exists() else None)


def parallel(args) -> None:
    from hybridinfer.eval.parallel_bench import context_for, parallel_rates
    counts = [1, 2, 4, 8]
    print("\n## 7. parallel sequences: aggregate decode rate\n\n| model | mode | sequences | aggregate t/s | "
          "t/s per sequence | vs 1 |\n| --- | --- | ---: | ---: | ---: | ---: |", flush=True)
    model, predictors = paths(DEFAULT_OUT) if args.model_7b is None else (Path(args.model_7b), None)
    runs = [("SmolLM2-135M Q4_1", ensure_default_model(), {})]
    if model.exists():
        runs.append(("synthetic ProSparse-7B Q4_0", model, {}))
        if predictors is not None and predictors.exists():
            runs.append(("synthetic ProSparse-7B Q4_0", model, {"predictors": str(predictors)}))
    for label, path, options in runs:
        engine = hybridinfer.load(str(path), n_ctx=context_for(counts, args.n_gen), **options)
        mode = "--predictors" if options else "dense"
        for r in parallel_rates(engine, counts, args.n_gen, args.repetitions):
            print(f"| {label} | {mode} | {r['n']} | {r['tokens_per_second']:.2f} | {r['per_sequence']:.2f} | "
                  f"{r['speedup']:.2f}x |", flush=True)
        del engine


def sparsity(args) -> None:
    """SiLU models with CATS and TEAL sparsity files at 25, 40 and 50%: decode rate side by side with the same
    engine's dense decode (`Engine.every_neuron`, alternating), the sparsity measured while decoding, and (SmolLM2)
    perplexity and KL to dense on the corpus's held-out test split."""
    from hybridinfer.eval.perplexity import perplexity
    from hybridinfer.sparsity.calibrate import calibrate_thresholds
    from hybridinfer.sparsity.thresholds import save_thresholds
    from hybridinfer.text.calibration import calibration_texts, token_chunks
    from tools.build_bench_model import SPARSITY_METHODS, SPARSITY_TARGETS, silu_paths, sparsity_path
    print("\n## 8. CATS and TEAL sparsity files on SiLU models (`hybridinfer sparsify`), dense and sparse alternating "
          "in one process\n\n| model | mode | test | dense t/s | sparse t/s | sparse / dense | decode sparsity | "
          "held-out text |\n| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", flush=True)
    smollm2 = ensure_default_model()
    files = {(m, t): DEFAULT_OUT.parent / sparsity_path(Path(smollm2.name), t, m).name
             for m in SPARSITY_METHODS for t in SPARSITY_TARGETS}
    if not all(f.exists() for f in files.values()):
        engine = hybridinfer.load(str(smollm2), n_ctx=256)
        chunks = token_chunks(engine.tokenizer, calibration_texts(None), 8192, 256)
        for (method, target), path in files.items():
            if not path.exists():
                save_thresholds(calibrate_thresholds(engine, chunks, target, method), path)
    held_out = "\n\n".join(calibration_texts(None, "test"))
    runs = [("SmolLM2-135M Q4_1", smollm2, files, True)]
    silu, silu_files = silu_paths(DEFAULT_OUT) if args.model_7b is None else (None, {})
    if silu is not None and silu.exists() and all(f.exists() for f in silu_files.values()):
        runs.append(("synthetic 7B SiLU variant Q4_0", silu, silu_files, False))
    else:
        print("(the 7B-shaped SiLU variant and its sparsity files are built by `make bench-model`)")
    for label, path, sparsity_files, quality in runs:
        ours, dense_rates = {}, []
        for key in sparsity_files:
            engine = hybridinfer.load(str(path), n_ctx=512 if quality else 256,
                                      sparsity_file=str(sparsity_files[key]))
            dense, sparse, measured = [], [], []
            for _ in range(args.repetitions):
                with engine.every_neuron():
                    dense.append(decode_rate(engine, args.n_gen))
                sparse.append(decode_rate(engine, args.n_gen))
                measured.append(engine.sparse_ffn.stats.sparsity(engine.config.n_ff))
            text = ""
            if quality:
                scored = perplexity(engine, held_out, 512, 4)
                text = (f"PPL {scored.perplexity:.3f} vs dense {scored.dense_perplexity:.3f} "
                        f"({100 * (scored.perplexity / scored.dense_perplexity - 1):+.1f}%), KL {scored.kl_to_dense:.4f}, "
                        f"sparsity {100 * scored.sparsity:.1f}% ({scored.scored_tokens} tokens scored)")
            d, c = statistics.median(dense), statistics.median(sparse)
            print(f"| {label} | {engine.mode} | tg{args.n_gen} | {d:.2f} | {c:.2f} | {c / d:.2f}x | "
                  f"{100 * statistics.median(measured):.1f}% | {text} |", flush=True)
            dense_rates.append(d)
            ours[engine.mode] = c
            del engine
        llama_cpp_sparsity_row(label, str(path), args, {"dense": statistics.median(dense_rates), **ours})


def llama_cpp_sparsity_row(label: str, path: str, args, ours: dict[str, float]) -> None:
    """Section 8's row for llama.cpp's dense decode of the same file, its rate in the dense column."""
    if not llamacpp_reference.available():
        print(f"| {label} | llama.cpp | tg{args.n_gen} | | | | | {LLAMA_CPP_MISSING} |", flush=True)
        return
    mode, rate = llama_cpp_decode(path, args.threads, args)
    print(f"| {label} | {mode} | tg{args.n_gen} | {rate:.2f} | | | | {ours_over(ours, rate)} |", flush=True)


def targets(args) -> None:
    from tools import bench_targets
    model, predictors = paths(DEFAULT_OUT) if args.model_7b is None else \
        (Path(args.model_7b), Path(args.model_7b.replace(".gguf", ".pred.gguf")))
    bench_targets.section(["host", "avx2", "generic"], args.threads, args.repetitions, args.n_gen, args.pool_mb,
                          bench_targets.models(ensure_default_model(), model, predictors),
                          os.environ.get("HYBRIDINFER_LLAMA_AVX2", ""))


def kquants(args) -> None:
    from tools import bench_kquants
    bench_kquants.section(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-gen", type=int, default=32)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--pool-mb", type=int, default=512, help="kernel benchmark: bytes of distinct matrices")
    parser.add_argument("--formats", default="f16,bf16,q8_0,q4_0,q4_1", help="kernel benchmark formats")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--model-7b", default=None, help="a 7B-shaped GGUF (default: the `make bench-model` build)")
    parser.add_argument("--only", default=None, help="run only these sections, e.g. 3,7")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    sections = [kernels, default_model, synthetic_7b, reference_model, hybrid_7b, startup, parallel, sparsity, targets,
                kquants]
    chosen = range(1, len(sections) + 1) if args.only is None else [int(n) for n in args.only.split(",")]
    for number in chosen:
        if number == 1 and args.skip_kernels:
            continue
        sections[number - 1](args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
