"""GPU check: on a machine with an NVIDIA GPU, run the hybrid runtime's tests on CUDA and a short hybrid
benchmark, and print a compact table. `make gpu-check` runs it; it should take a few minutes.

Usage: PYTHONPATH=. python tools/gpu_check.py [--device cuda] [--model RELU.gguf] [-n TOKENS]
Without --model it synthesizes a ProSparse-shaped checkpoint (7B width, 4 layers) and converts it.
`--device cpu` dry-runs the same steps on the CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import hybridinfer
from hybridinfer.benchmark import decode_rate
from hybridinfer.calibration import token_chunks
from hybridinfer.convert import convert_checkpoint
from hybridinfer.hybrid_ffn import hybrid_report
from hybridinfer.hybrid_setup import element_bytes_for
from hybridinfer.profiling import profile_activations, save_profile
from tools.synth_checkpoint import synthesize

SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 4, "num_attention_heads": 32,
         "num_key_value_heads": 32, "gate_bias": -1.2}


def run_tests(device: str) -> str:
    env = {**os.environ, "HYBRIDINFER_TEST_DEVICE": device}
    done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "tests/test_hybrid.py"], env=env,
                          capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]


def synthetic_model(workdir: Path) -> Path:
    hf_dir = synthesize(workdir / "hf", "prosparse-llama-2-7b", size="small", overrides=SHAPE, progress=False)
    return Path(convert_checkpoint(hf_dir, workdir / "model.gguf", outtype="f16").output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=None)
    parser.add_argument("-n", "--tokens", type=int, default=32)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU is visible to torch; run on a GPU machine, or pass --device cpu to dry-run")
    print(f"hybrid tests on {args.device}: {run_tests(args.device)}")
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(synthetic_model(Path(scratch)))
        dense = hybridinfer.load(model, n_ctx=256)
        chunks = token_chunks(dense.tokenizer, ["The quick brown fox jumps over the lazy dog. " * 40], 512, 128)
        activations = Path(scratch) / "model.act.gguf"
        save_profile(profile_activations(dense, chunks), activations)
        ffn_bytes = dense.config.n_layer * dense.config.n_ff * 3 * dense.config.n_embd * element_bytes_for(args.device)
        print(f"model {model}: {dense.config.n_layer} layers, n_embd {dense.config.n_embd}, n_ff {dense.config.n_ff}")
        print("| budget | tokens/s | GPU share | attention ms | GPU FFN ms | CPU FFN ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| dense reference (CPU, float32) | {decode_rate(dense, args.tokens):.2f} | - | - | - | - |")
        del dense
        fixed = hybridinfer.load(model, n_ctx=256, vram_budget="1TiB", activations=str(activations),
                                 device=args.device)
        base = fixed.split.fixed_bytes
        del fixed
        for share in (0.0, 0.25, 0.5, 1.0):
            budget = 0 if share == 0 else int(base + share * ffn_bytes) + 1
            engine = hybridinfer.load(model, n_ctx=256, vram_budget=str(budget), activations=str(activations),
                                      device=args.device)
            rate = decode_rate(engine, args.tokens)
            r = hybrid_report(engine)
            label = "0 (all CPU)" if share == 0 else f"fixed + {int(100 * share)}% of FFN"
            print(f"| {label} | {rate:.2f} | {100 * r['gpu_ffn_share']:.0f}% | {r['attention_ms_per_token']:.2f} | "
                  f"{r['gpu_ffn_ms_per_token']:.2f} | {r['cpu_ffn_ms_per_token']:.2f} |")
            del engine


if __name__ == "__main__":
    main()
