"""The steps `tools/gpu_check.py` runs each in a process of its own (so that a crash, a hang or a timeout loses
that step alone). Each prints one JSON line prefixed by RESULT_MARK on stdout; anything else it prints is a log.

    plan    synthesize the ProSparse-like Q4_0 model with predictors and activation counts (`tools/synth_gguf.py`)
            and list the configurations of the decode table: budgets that hold 0, 25, 50 and 100% of the FFN
            neurons, -ngl at the same VRAM, every layer on the GPU
    decode  load one configuration and decode: tokens/s, the hybrid report, load and compile seconds, and the
            token's model beside the measured ms (`tools/gpu_token_model.py`)

Usage: PYTHONPATH=. python tools/gpu_check_steps.py plan OUT_PREFIX --device D --shape S [--layers N]
       PYTHONPATH=. python tools/gpu_check_steps.py decode CONFIG_JSON --device D -n TOKENS
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULT_MARK = "GPU_CHECK_RESULT "
N_CTX = 512


def result(record: dict) -> None:
    print(RESULT_MARK + json.dumps(record), flush=True)


def plan(out: Path, device: str, shape: str, layers: int | None) -> None:
    from hybridinfer.hybrid.placement.plan import gpu_layers_for
    from hybridinfer.hybrid.setup import memory_model
    from hybridinfer.model_file.config import ModelConfig
    from hybridinfer.model_file.fingerprint import Fingerprint
    from hybridinfer.model_file.gguf_file import GGUFFile
    from hybridinfer.predictors.file import load_predictors
    from tools.synth_gguf import synthesize

    start = time.perf_counter()
    model, predictors, activations = synthesize(out, shape, layers, device, progress=lambda message: None)
    synth_s = time.perf_counter() - start
    file = GGUFFile(model)
    config = ModelConfig.from_gguf(file)
    memory = memory_model(file, config, N_CTX, device, load_predictors(str(predictors),
                                                                        Fingerprint.of_model(file, config)))
    every_layer = memory.workspace + sum(memory.layer) + memory.output
    ffn = sum(n * config.n_ff for n in memory.neuron)
    sparse = {"model": str(model), "predictors": str(predictors), "activations": str(activations)}
    dense = {"model": str(model)}
    every = dict(dense, label=f"-ngl {config.n_layer + 1}: every layer on the GPU (dense)",
                 n_gpu_layers=config.n_layer + 1)  # first: it needs no CPU kernel compiled
    configs = [every, dict(sparse, label="all on the CPU (budget 0)", vram_budget="0", compiles=True)]
    for share in (0.25, 0.5, 1.0):
        budget = every_layer + int(share * ffn) + (1 << 20)
        n = gpu_layers_for(memory_model(file, config, N_CTX, device), budget)
        configs.append(dict(sparse, label=f"hybrid, {int(100 * share)}% of the neurons fit", vram_budget=str(budget)))
        configs.append(dict(dense, label=f"-ngl {n} (dense, same VRAM)", n_gpu_layers=n))
    if device.startswith("cuda"):  # what the decode step's CUDA graphs save: two configurations again, eagerly
        configs.append(dict(every, label=every["label"] + ", eager (no CUDA graphs)", graphs="0"))
        configs.append(dict(configs[4], label=configs[4]["label"] + ", eager (no CUDA graphs)", graphs="0"))
    result({"synth_s": synth_s, "model_gb": model.stat().st_size / 1e9,
            "predictors_gb": predictors.stat().st_size / 1e9,
            "n_layer": config.n_layer, "n_embd": config.n_embd, "n_ff": config.n_ff, "n_ctx": N_CTX,
            "fixed_gib": every_layer / 2**30, "ffn_gib": ffn / 2**30, "configs": configs})


def decode(config: dict, device: str, n_tokens: int) -> None:
    import hybridinfer
    from hybridinfer.eval.benchmark import decode_rate
    from hybridinfer.hybrid.report import hybrid_report
    from hybridinfer.kernels import compile_time

    options = {key: value for key, value in config.items() if key not in ("model", "label", "compiles", "graphs")}
    os.environ["HYBRIDINFER_GPU_TIMING"] = "1"  # the table's GPU and transfer ms (CUDA events, off by default)
    if "graphs" in config:
        os.environ["HYBRIDINFER_GPU_GRAPHS"] = config["graphs"]
    print(f"{config['label']}: loading", flush=True)
    start = time.perf_counter()
    engine = hybridinfer.load(config["model"], n_ctx=N_CTX, device=device, **options)
    load_s = time.perf_counter() - start
    print(f"loaded in {load_s:.1f} s (numba compile so far {compile_time.seconds():.1f} s); first tokens", flush=True)
    start = time.perf_counter()
    decode_rate(engine, 1, warmup=0)  # the prompt and a first token: the kernels compile (Triton) or load (numba)
    first_s = time.perf_counter() - start
    print(f"first tokens in {first_s:.1f} s (numba compile so far {compile_time.seconds():.1f} s); decoding "
          f"{n_tokens} tokens", flush=True)
    rate = decode_rate(engine, n_tokens)
    report = hybrid_report(engine) or {}
    result({"label": config["label"], "tokens_per_s": rate, "load_s": load_s, "first_s": first_s,
            "numba_compile_s": compile_time.seconds(), "hybrid": report,
            "model": modelled_token(engine, report, 1000 / rate, n_tokens)})


def modelled_token(engine, report: dict, measured_ms: float, n_tokens: int) -> dict:
    """The token's model (`tools/gpu_token_model.py`), from the decode just timed (its statistics, its positions:
    decode_rate's 8 prompt tokens and 2 warm-up tokens, then `n_tokens`), one more token's launches and the probe."""
    from hybridinfer.eval.benchmark import prompt_tokens
    from tools import gpu_token_model as token

    if engine.gpu_side is None:
        return {}
    nbytes = token.token_bytes(engine, 10 + n_tokens // 2)
    copies = token.token_copies(engine)
    history = prompt_tokens(engine, 8)
    engine.reset()
    engine.feed(history)
    history.append(0)
    engine.feed(history)  # a first decoded token: what happens once per run is not counted below
    launches, _ = token.launches_per_token(engine, history + [0])
    machine = token.probe(engine.gpu_side.device, engine.config.n_embd)
    return token.model_row(measured_ms, report, machine, nbytes, copies, launches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("plan", "decode"))
    parser.add_argument("what", help="plan: the output prefix; decode: the configuration as JSON")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="13b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("-n", "--tokens", type=int, default=16)
    args = parser.parse_args()
    if args.step == "plan":
        plan(Path(args.what), args.device, args.shape, args.layers)
    else:
        decode(json.loads(args.what), args.device, args.tokens)


if __name__ == "__main__":
    sys.exit(main())
