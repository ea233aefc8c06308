"""`make bench`, section 10: the K-quant mixes users download (Q4_K_M), ours next to llama.cpp on the same files.

Files: SmolLM2-135M and the 7B-shaped synthetic model (`make bench-model`) re-quantized to Q4_K_M by llama.cpp's
own quantizer (`llama_model_quantize`, from their Q4_1 / Q4_0 values; made once, kept beside the bench model).
Per file, each configuration in its own process (`hybridinfer bench --json`, so that its peak RSS is its own):
our dense decode, --predictors where the model has them (the predictors of a model serve all its quantizations),
llama.cpp's dense decode and the ratios; for SmolLM2 also the mean KL divergence of our next-token distributions
to llama.cpp's on the same file and the top-1 agreement, over a few prompts.

Usage: PYTHONPATH=. python tools/bench_kquants.py [-n 16] [-r 3] [-t 2]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import hybridinfer
from hybridinfer.default_model import ensure_default_model
from hybridinfer.eval import llamacpp_reference
from hybridinfer.model_file.gguf_file import GGUFFile
from tools.bench_hybrid import RSS_MARGIN, run, tg
from tools.build_bench_model import DEFAULT_OUT, paths

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "Once upon a time, there was a little",
           "The three primary colors are"]


def q4_k_m_beside(source: Path) -> Path:
    """`source` re-quantized to Q4_K_M by llama.cpp, made once beside it."""
    target = source.with_name(source.name.split(".")[0] + ".Q4_K_M.gguf")
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        llamacpp_reference.quantize(str(source), str(partial), "q4_k_m")
        partial.rename(target)
    return target


def types_of(path: Path) -> str:
    counts = collections.Counter(t.type.name for t in GGUFFile(path).tensors.values())
    return ", ".join(f"{n} {name}" for name, n in counts.most_common())


def model_rows(label: str, path: Path, predictors: Path | None, args) -> None:
    files = path.stat().st_size + (predictors.stat().st_size if predictors else 0)
    print(f"\n{label}: {path.name}, {path.stat().st_size / 1e9:.2f} GB ({types_of(path)})\n")
    print("| mode | t/s | peak RSS GB | RSS limit GB (files + 1.5) |\n| --- | ---: | ---: | ---: |", flush=True)
    ours = {}
    configurations = [("dense", [])] + ([("--predictors", ["--predictors", str(predictors)])] if predictors else [])
    for mode, options in configurations:
        result = run(path, options, args.n_gen, args.repetitions, args.threads)
        ours[mode] = tg(result)["tokens_per_second"]
        print(f"| ours {mode} | {ours[mode]:.2f} | {result['peak_rss_bytes'] / 1e9:.2f} | "
              f"{(files + RSS_MARGIN) / 1e9:.2f} |", flush=True)
    reference = llamacpp_reference.decode_rate(str(path), n_threads=args.threads, n_gen=args.n_gen,
                                               repetitions=args.repetitions)
    rate = reference["tokens_per_second"]
    print(f"| llama.cpp {reference['version']} dense | {rate:.2f} | - | - |")
    print("\nours / llama.cpp dense: " + ", ".join(f"{mode} {value / rate:.2f}x" for mode, value in ours.items()),
          flush=True)


def agreement_row(path: Path, args) -> None:
    engine = hybridinfer.load(str(path), n_ctx=256)
    prompts = [engine.tokenize(text) for text in PROMPTS]
    found = llamacpp_reference.logit_agreement(str(path), engine.logits, prompts, n_threads=args.threads)
    print(f"\nnext-token distributions against llama.cpp's on the same file ({found['positions']} positions of "
          f"{len(prompts)} prompts): mean KL {found['mean_kl']:.4f} (target <= 0.01), max {found['max_kl']:.4f}, "
          f"top-1 agreement {found['top1_agreement']:.1%}", flush=True)


def section(args) -> None:
    print("\n## 10. K-quant files (Q4_K_M by llama.cpp's quantizer), ours next to llama.cpp")
    if not llamacpp_reference.available():
        print("\nneeds llama-cpp-python (its quantizer makes the files): pip install -e '.[llama]'")
        return
    smollm = q4_k_m_beside(ensure_default_model())
    model_rows("SmolLM2-135M Q4_K_M", smollm, None, args)
    agreement_row(smollm, args)
    model, predictors = paths(DEFAULT_OUT)
    if not model.exists():
        print(f"\n{model} not built: `make bench-model`")
        return
    model_rows("synthetic ProSparse-7B Q4_K_M", q4_k_m_beside(model), predictors if predictors.exists() else None,
               args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--n-gen", type=int, default=16)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-t", "--threads", type=int, default=2)
    section(parser.parse_args())


if __name__ == "__main__":
    main()
