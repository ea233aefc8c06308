"""`make bench` section 9: the CPU kernels compiled for other instruction sets, side by side with this machine's
own build in one run. Each build runs in a child process with the instruction-set switch set
(HYBRIDINFER_CPU=avx2: 256-bit AVX2, as a desktop CPU without AVX-512 runs it; generic: plain LLVM vectors, as on
ARM), since a process compiles its kernels for one target.

Rows: the dense int8 matrix-vector kernels at 7B shapes (GB/s, and each build's share of the host build's), then
decode rates of SmolLM2 and of the 7B-shaped model dense and with its predictors; with --llama-avx2 DIR (or
$HYBRIDINFER_LLAMA_AVX2), llama.cpp's dense decode of the same files by a llama-cpp-python built for AVX2 alone
and installed into DIR:

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF" \
        pip install --no-deps --target DIR llama-cpp-python==0.3.36

Usage: PYTHONPATH=. python tools/bench_targets.py [-t 2] [-r 3] [--targets host,avx2,generic] [--llama-avx2 DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

KERNEL_FORMATS = "q8_0,q4_0,q4_1"


LLAMA_RATE = """
import json, sys
from hybridinfer.eval import llamacpp_reference
print(json.dumps(llamacpp_reference.decode_rate(sys.argv[1], n_threads=int(sys.argv[2]), n_gen=int(sys.argv[3]),
                                                repetitions=int(sys.argv[4]))))
"""


def _child(target: str, args: list[str], python_path: str = "") -> dict:
    """The JSON object a `python ARGS` child prints, compiled for `target` (`python_path` first on its path)."""
    env = {**os.environ, "HYBRIDINFER_CPU": target, "TOKENIZERS_PARALLELISM": "false"}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (python_path, env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"HYBRIDINFER_CPU={target} {' '.join(args)}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def kernel_rates(target: str, threads: int, pool_mb: int, repeats: int) -> dict[str, float]:
    """GB/s of each dense int8 matrix-vector kernel (format, shape) for a build."""
    report = _child(target, ["-m", "hybridinfer.eval.kernel_bench", "--json", "--threads", str(threads), "--pool-mb",
                             str(pool_mb), "--repeats", str(repeats), "--formats", KERNEL_FORMATS])
    return {f"{r['format']} {r['shape']}": r["gbs"] for r in report["results"]
            if r["kernel"] == "matvec" and r["active"] == 1.0 and r["format"].endswith(" int8")}


def decode_rate(target: str, model: Path, threads: int, n_gen: int, repeats: int, extra: list[str]) -> float:
    report = _child(target, ["-m", "hybridinfer", "bench", "-m", str(model), "-p", "0", "-n", str(n_gen), "-r",
                             str(repeats), "-t", str(threads), "-c", "256", "--json", *extra])
    return next(r["tokens_per_second"] for r in report["results"] if r["test"].startswith("tg"))


def llama_avx2_rate(llama_dir: str, model: Path, threads: int, n_gen: int, repeats: int) -> float:
    """llama.cpp's dense decode of `model` by the AVX2-only build in `llama_dir`."""
    report = _child("host", ["-c", LLAMA_RATE, str(model), str(threads), str(n_gen), str(repeats)], llama_dir)
    return report["tokens_per_second"]


def section(targets: list[str], threads: int, repeats: int, n_gen: int, pool_mb: int,
            models: list[tuple[str, Path, list[str]]], llama_avx2: str = "") -> None:
    print(f"\n## 9. instruction sets: {', '.join(targets)} builds side by side ({threads} threads)\n", flush=True)
    rates = {t: kernel_rates(t, threads, pool_mb, repeats) for t in targets}
    base = targets[0]
    print("| kernel | shape | " + " | ".join(f"{t} GB/s" for t in targets) + " | " +
          " | ".join(f"{t} / {base}" for t in targets[1:]) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in targets) + " | " + " | ".join("---:" for _ in targets[1:]) + " |")
    for key, host_rate in rates[base].items():
        name, shape = key.split(" int8 ")
        cells = [f"{rates[t].get(key, float('nan')):.1f}" for t in targets]
        ratios = [f"{rates[t].get(key, float('nan')) / host_rate:.2f}" for t in targets[1:]]
        print(f"| {name} int8 matvec | {shape} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |", flush=True)
    llama = " | llama.cpp AVX2 t/s | avx2 / llama.cpp AVX2" if llama_avx2 else ""
    print("\n| model | mode | " + " | ".join(f"{t} t/s" for t in targets) + " | " +
          " | ".join(f"{t} / {base}" for t in targets[1:]) + llama + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in targets) + " | " + " | ".join("---:" for _ in targets[1:]) +
          (" | ---: | ---:" if llama_avx2 else "") + " |")
    references: dict[Path, float] = {}
    for label, model, extra in models:
        speeds = {t: decode_rate(t, model, threads, n_gen, repeats, extra) for t in targets
                  if t != "generic" or "7B" not in label}  # the generic build of a 7B model: minutes a token
        cells = [f"{speeds[t]:.2f}" if t in speeds else "" for t in targets]
        ratios = [f"{speeds[t] / speeds[base]:.2f}" if t in speeds else "" for t in targets[1:]]
        if llama_avx2:
            if model not in references:
                references[model] = llama_avx2_rate(llama_avx2, model, threads, n_gen, repeats)
            ratio = f"{speeds['avx2'] / references[model]:.2f}" if "avx2" in speeds else ""
            ratios += [f"{references[model]:.2f}", ratio]
        mode = " ".join(extra) or "dense"
        print(f"| {label} | {mode} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |", flush=True)


def main() -> None:
    from hybridinfer.default_model import ensure_default_model
    from tools.build_bench_model import DEFAULT_OUT, paths
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-n", "--n-gen", type=int, default=32)
    parser.add_argument("--pool-mb", type=int, default=512)
    parser.add_argument("--targets", default="host,avx2,generic")
    parser.add_argument("--llama-avx2", default=os.environ.get("HYBRIDINFER_LLAMA_AVX2", ""),
                        help="a directory holding llama-cpp-python built for AVX2 alone")
    args = parser.parse_args()
    section(args.targets.split(","), args.threads, args.repetitions, args.n_gen, args.pool_mb,
            models(ensure_default_model(), *paths(DEFAULT_OUT)), args.llama_avx2)


def models(smollm2: Path, model_7b: Path, predictors_7b: Path) -> list[tuple[str, Path, list[str]]]:
    runs = [("SmolLM2-135M Q4_1", smollm2, [])]
    if model_7b.exists():
        runs.append(("synthetic ProSparse-7B Q4_0", model_7b, []))
        if predictors_7b.exists():
            runs.append(("synthetic ProSparse-7B Q4_0", model_7b, ["--predictors", str(predictors_7b)]))
    return runs


if __name__ == "__main__":
    main()
