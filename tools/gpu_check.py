"""GPU check (`make gpu-check`, one NVIDIA GPU, about 8 minutes): the GPU kernel and hybrid runtime tests on CUDA,
then a 13B-shaped ProSparse-like Q4_0 model with predictors, synthesized straight into GGUF (`tools/synth_gguf.py`),
decoded at budgets that hold 0, 25, 50 and 100% of the FFN neurons, next to -ngl at the same VRAM and to every
layer on the GPU; one table: tokens/s, GPU share of FFN activations, ms per token of each side and of transfers.

It uses the torch and Triton installed on the machine (it installs nothing). `--device cpu --layers 2` dry-runs
every step on the CPU (the torch twins, slowly).

Usage: PYTHONPATH=. python tools/gpu_check.py [--device cuda] [--shape 13b] [--layers N] [-n TOKENS] [--skip-tests]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import hybridinfer
from hybridinfer.eval.benchmark import decode_rate
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.hybrid.report import hybrid_report
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.hybrid.placement.plan import gpu_layers_for
from hybridinfer.predictors.file import load_predictors
from tools.synth_gguf import synthesize

N_CTX = 512


def run_tests(device: str) -> str:
    env = {**os.environ, "HYBRIDINFER_TEST_DEVICE": device}
    done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "tests/test_gpu_kernels.py",
                           "tests/test_hybrid.py", "tests/test_hybrid_kquants.py"], env=env, capture_output=True,
                          text=True)
    lines = done.stdout.strip().splitlines()
    failures = [line for line in lines if line.startswith("FAILED")]
    return "\n".join(failures[:10] + lines[-1:]) if lines else done.stderr.strip()[-500:]


def measure(label: str, model: Path, n_tokens: int, device: str, **options) -> None:
    start = time.perf_counter()
    engine = hybridinfer.load(str(model), n_ctx=N_CTX, device=device, **options)
    load_s = time.perf_counter() - start
    rate = decode_rate(engine, n_tokens)
    r = hybrid_report(engine) or {}
    gib = r.get("gpu_bytes", 0) / 2**30

    def ms(key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    print(f"| {label} | {gib:.2f} | {rate:.2f} | {100 * r.get('gpu_ffn_share', 0):.0f}% | {ms('gpu_ms_per_token')} | "
          f"{ms('cpu_ms_per_token')} | {ms('transfer_ms_per_token')} | {load_s:.0f} |", flush=True)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="13b")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (a dry run)")
    parser.add_argument("-n", "--tokens", type=int, default=16)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible to torch; run on a GPU machine, or pass --device cpu to dry-run")
    began = time.perf_counter()
    if not args.skip_tests:
        print(f"GPU tests on {args.device}: {run_tests(args.device)} ({time.perf_counter() - began:.0f} s)",
              flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        model, predictors, activations = synthesize(Path(scratch) / "prosparse-like", args.shape, args.layers,
                                                    args.device, progress=lambda message: None)
        print(f"synthesized {model.stat().st_size / 1e9:.2f} GB Q4_0 + {predictors.stat().st_size / 1e9:.2f} GB "
              f"predictors in {time.perf_counter() - start:.0f} s", flush=True)
        file = GGUFFile(model)
        config = ModelConfig.from_gguf(file)
        predictor_set = load_predictors(str(predictors), Fingerprint.of_model(file, config))
        memory = memory_model(file, config, N_CTX, args.device, predictor_set)
        every_layer = memory.workspace + sum(memory.layer) + memory.output
        ffn = sum(n * config.n_ff for n in memory.neuron)
        print(f"\n{config.n_layer} layers, n_embd {config.n_embd}, n_ff {config.n_ff}; GPU: attention + KV "
              f"({N_CTX} tokens) + predictors + output {every_layer / 2**30:.2f} GiB, FFN neurons "
              f"{ffn / 2**30:.2f} GiB\n")
        print("| configuration | GPU GiB | tokens/s | GPU FFN share | GPU ms | CPU ms | transfer ms | load s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        common = {"predictors": str(predictors), "activations": str(activations)}
        measure("all on the CPU (budget 0)", model, args.tokens, args.device, vram_budget="0", **common)
        for share in (0.25, 0.5, 1.0):
            budget = every_layer + int(share * ffn) + (1 << 20)
            measure(f"hybrid, {int(100 * share)}% of the neurons fit", model, args.tokens, args.device,
                    vram_budget=str(budget), **common)
            n = gpu_layers_for(memory_model(file, config, N_CTX, args.device), budget)
            measure(f"-ngl {n} (dense, same VRAM)", model, args.tokens, args.device, n_gpu_layers=n)
        measure(f"-ngl {config.n_layer + 1}: every layer on the GPU (dense)", model, args.tokens, args.device,
                n_gpu_layers=config.n_layer + 1)
    print(f"\n(gpu-check took {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
