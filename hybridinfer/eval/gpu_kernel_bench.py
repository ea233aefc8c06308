"""GPU kernel benchmark (not a test): the GPU side's decode kernels at a model's layer shapes, each one's time beside
what its bytes take at the device's copy bandwidth measured in the same run (as llama.cpp's `test-backend-ops perf`
reports GB/s per op). One row per measurement, printed as it is measured:

    matvec FMT      the GEMV of each weight format over a gate/up-shaped and a down-shaped matrix (split-K)
    hot_ffn FMT     the sparse FFN on the hot neurons (S2 + S3): a share of them candidates (the predictor's mask),
                    bytes = the candidates' gate rows + the up and down_t rows of those that fired
    attention       one new position over the float16 KV cache read in place, at several contexts, with the
                    position shares per key/value head `splits_for` picks and with others; the model's heads and a
                    grouped-query shape (8 key/value heads)

Each kernel runs once per weight of a pool of distinct copies much larger than the GPU's L2 cache, so that every
call reads from memory. On CUDA the pool's calls are captured as one CUDA graph and replayed (no launch gaps in the
time), timed with CUDA events; elsewhere (the CPU device: the torch twins, or Triton interpreted) they run eagerly.
Median of the repeats. "% of copy" = the kernel's GB/s over a device-to-device copy's (bytes read + written).

Usage: hybridinfer bench --kernels --device cuda   (or: python -m hybridinfer.eval.gpu_kernel_bench [--device cuda]
       [--shape 13b|7b|tiny] [--formats q4_0,q4_1,q8_0,q4_k,q6_k,q5_0] [--contexts 512,4096,16384,32768]
       [--pool-mb 512] [--repeats 7] [--gpu-kernels triton|torch] [--json])
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..gpu import attention_reference, kernels_for
from ..gpu.weights import FIELD_NAMES, DeviceMatrix, device_matrix
from .kernel_bench import random_weight_bytes

SHAPES = {  # n_embd, n_ff, n_head, n_head_kv, head_dim (LLaMA-2's; tiny: a dry run on the CPU device)
    "13b": (5120, 13824, 40, 40, 128),
    "7b": (4096, 11008, 32, 32, 128),
    "tiny": (256, 768, 16, 16, 16),
}
FORMATS = {"q4_0": T.Q4_0, "q4_1": T.Q4_1, "q8_0": T.Q8_0, "q4_k": T.Q4_K, "q6_k": T.Q6_K, "q5_0": T.Q5_0,
           "q5_1": T.Q5_1, "q5_k": T.Q5_K, "f16": T.F16}
CANDIDATES = 0.2  # of the hot neurons, the share the predictor marks (about half of them fire)
GROUPED_KV_HEADS = 8  # the grouped-query attention shape's key/value heads (Llama 3 8B's, Qwen's)
DEFAULT_FORMATS = "q4_0,q4_1,q8_0,q4_k,q6_k,q5_0"  # q5_0: Q4_K_M's type for rows not of whole super-blocks
CONTEXTS = (512, 4096, 16384, 32768)  # attention: positions already cached
POOL_MB = 512  # distinct copies of each kernel's weights, about ten times an H100's L2
HEADER = ["| kernel | shape | MB read | us | GB/s | % of copy |", "| --- | --- | ---: | ---: | ---: | ---: |"]


def copy_gbs(device: torch.device, nbytes: int = 256 << 20) -> float:
    """A device-to-device copy's bandwidth, bytes read + written (also `tools/gpu_token_model.py`'s bandwidths)."""
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / seconds_per_call([lambda: target.copy_(source)], device, 5) / 1e9


def seconds_per_call(calls: list[Callable[[], object]], device: torch.device, repeats: int) -> float:
    """Median over `repeats` of the time of all `calls` in order, divided by their number. On CUDA: run once (the
    kernels compile), captured as one graph, replayed, timed with CUDA events."""
    for call in calls:
        call()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            for call in calls:
                call()
            times.append(time.perf_counter() - start)
    return statistics.median(times) / len(calls)


def copies(matrix: DeviceMatrix, pool_bytes: int) -> list[DeviceMatrix]:
    """The matrix and distinct copies of it on its device, about pool_bytes in all (at least 2)."""
    count = max(2, math.ceil(pool_bytes / matrix.nbytes))
    fields = {name: getattr(matrix, name) for name in FIELD_NAMES if getattr(matrix, name) is not None}
    return [matrix] + [DeviceMatrix(matrix.qtype, matrix.rows, matrix.cols, **{k: v.clone() for k, v in fields.items()})
                       for _ in range(count - 1)]


def random_matrix(rng, qtype: T, shape: tuple[int, int], device: torch.device) -> DeviceMatrix:
    return device_matrix(random_weight_bytes(rng, qtype, shape), qtype, shape, device)


def row(kernel: str, shape: str, nbytes: float, seconds: float, copy: float, **extra) -> dict:
    gbs = nbytes / seconds / 1e9
    return {"kernel": kernel, "shape": shape, "mb": nbytes / 1e6, "us": seconds * 1e6, "gbs": gbs,
            "of_copy": gbs / copy, **extra}


def matvec_rows(ops, rng, name: str, qtype: T, n_embd: int, n_ff: int, device, pool_bytes: int, repeats: int,
                copy: float):
    for label, shape in ((f"{n_ff}x{n_embd} (gate/up)", (n_ff, n_embd)), (f"{n_embd}x{n_ff} (down)", (n_embd, n_ff))):
        pool = copies(random_matrix(rng, qtype, shape, device), pool_bytes)
        x = torch.from_numpy(rng.standard_normal((1, shape[1]), dtype=np.float32)).to(device)
        seconds = seconds_per_call([lambda m=m: ops.matvec(m, x) for m in pool], device, repeats)
        yield row(f"matvec {name}", label, pool[0].nbytes + x.numel() * 4, seconds, copy)


def hot_ffn_row(ops, rng, name: str, qtype: T, n_embd: int, n_ff: int, device, pool_bytes: int, repeats: int,
                copy: float) -> dict:
    """Every neuron hot (a budget that holds them all), CANDIDATES of them marked; threshold 0 (ReLU)."""
    gate, up, down_t = (random_matrix(rng, qtype, (n_ff, n_embd), device) for _ in range(3))
    layers = list(zip(*(copies(m, pool_bytes // 3) for m in (gate, up, down_t))))
    x = torch.from_numpy(rng.standard_normal(n_embd, dtype=np.float32)).to(device)
    mask = torch.from_numpy(rng.random(n_ff) < CANDIDATES).to(device)
    _, fired = ops.hot_ffn(gate, up, down_t, x, mask, 0.0)
    fired, candidates = int(fired), int(mask.sum())
    row_bytes = gate.nbytes // n_ff
    nbytes = candidates * row_bytes + fired * 2 * row_bytes + n_embd * 4
    seconds = seconds_per_call([lambda g=g, u=u, d=d: ops.hot_ffn(g, u, d, x, mask, 0.0) for g, u, d in layers],
                               device, repeats)
    return row(f"hot_ffn {name}", f"{n_ff}x{n_embd}, {candidates} candidates, {fired} fired", nbytes, seconds, copy,
               candidates=candidates, fired=fired)


def attention_rows(kernels_name: str, n_head: int, n_kv: int, head_dim: int, contexts: list[int], device,
                   pool_bytes: int, repeats: int, copy: float):
    """One new position at each context over a float16 cache; the Triton kernel at the position shares
    `splits_for` picks and at a quarter and 4 times as many (within 1..MAX_SPLITS, and as `shares` caps them for
    the cache's length), the twin as it is."""
    rope = head_dim // 2
    for context in contexts:
        n_ctx = context + 1  # the new position is the last one
        cache_bytes = 2 * n_ctx * n_kv * head_dim * 2
        gen = torch.Generator(device=device).manual_seed(context)
        caches = [tuple(torch.randn((n_ctx, n_kv, head_dim), generator=gen, device=device, dtype=torch.float16)
                        for _ in range(2)) for _ in range(max(2, math.ceil(pool_bytes / cache_bytes)))]
        angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64), 10000.0 ** (-torch.arange(rope) / rope))
        cos, sin = angles.cos().float().to(device), angles.sin().float().to(device)
        qkv = torch.randn((1, (n_head + 2 * n_kv) * head_dim), generator=gen, device=device)
        position = torch.full((1,), context, dtype=torch.int32, device=device)
        ops, scratches, chosen = attention_reference, {0: None}, 0  # shares a launch uses -> its scratch (0: twin)
        if kernels_name == "triton":
            from ..gpu import attention_kernels as ops
            picked = ops.splits_for(n_kv)
            scratches = {}
            for splits in (picked, picked // 4, picked * 4):
                if 1 <= splits <= ops.MAX_SPLITS:
                    scratch = ops.Scratch(n_head, n_kv, head_dim, device, splits=splits)
                    scratches.setdefault(ops.shares(scratch, caches[0][0]), scratch)
            chosen = next(iter(scratches))  # picked's
        for used in sorted(scratches):
            calls = [lambda k=k, v=v: ops.decode_attention(qkv, k, v, cos, sin, context, n_head, position,
                                                           scratches[used]) for k, v in caches]
            seconds = seconds_per_call(calls, device, repeats)
            label = f", {used} shares{' (chosen)' if used == chosen else ''}" if used else ""
            yield row("attention f16", f"{n_head}/{n_kv} heads of {head_dim}, context {context}{label}",
                      cache_bytes + qkv.numel() * 4, seconds, copy)
        del caches


def check_formats(formats: list[str]) -> None:
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown format {(unknown or [''])[0]!r}; choose from {', '.join(FORMATS)}")


def machine_figures(device: torch.device, kernels: str | None) -> dict:
    """The device, the kernel set it runs, the copy bandwidth the rows are measured against."""
    ops = kernels_for(device, kernels)
    machine = {"device": str(device), "kernels": "torch" if ops.__name__.endswith(".reference") else "triton",
               "copy_gbs": copy_gbs(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        machine.update(name=p.name, sms=p.multi_processor_count, l2_mb=getattr(p, "L2_cache_size", 0) / 1e6)
    return machine


def run(machine: dict, shape: str, formats: list[str], contexts: list[int], pool_mb: int, repeats: int,
        emit: Callable[[dict], None]) -> None:
    """Measure, and `emit` each row as it is measured: the first format's GEMV and sparse FFN, then attention, then
    the other formats' GEMV."""
    check_formats(formats)
    device, kernels_name = torch.device(machine["device"]), machine["kernels"]
    ops, copy = kernels_for(device, kernels_name), machine["copy_gbs"]
    n_embd, n_ff, n_head, n_kv, head_dim = SHAPES[shape]
    rng = np.random.default_rng(0)
    pool_bytes = pool_mb * 1_000_000
    first, *others = formats
    for measured in matvec_rows(ops, rng, first, FORMATS[first], n_embd, n_ff, device, pool_bytes, repeats, copy):
        emit(measured)
    emit(hot_ffn_row(ops, rng, first, FORMATS[first], n_embd, n_ff, device, pool_bytes, repeats, copy))
    grouped = [GROUPED_KV_HEADS] if GROUPED_KV_HEADS < n_kv and n_head % GROUPED_KV_HEADS == 0 else []
    for kv in [n_kv] + grouped:
        for measured in attention_rows(kernels_name, n_head, kv, head_dim, contexts, device, pool_bytes, repeats,
                                       copy):
            emit(measured)
    for name in others:
        for measured in matvec_rows(ops, rng, name, FORMATS[name], n_embd, n_ff, device, pool_bytes, repeats, copy):
            emit(measured)


def machine_line(machine: dict) -> str:
    gpu = f"{machine['name']}, {machine['sms']} SMs, L2 {machine['l2_mb']:.0f} MB" if "name" in machine else "no GPU"
    return (f"device {machine['device']} ({gpu}), kernels {machine['kernels']}: copy {machine['copy_gbs']:.0f} GB/s "
            f"(bytes read + written)")


def table_line(r: dict) -> str:
    return (f"| {r['kernel']} | {r['shape']} | {r['mb']:.1f} | {r['us']:.1f} | {r['gbs']:.0f} | "
            f"{100 * r['of_copy']:.0f}% |")


def device_for(name: str, kernels: str | None) -> torch.device:
    """The torch device `name`, if the benchmark can run there with `kernels` (else ValueError, one line)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a torch device (cuda, cuda:1, cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU is visible to torch here")
    kernels = kernels or os.environ.get("HYBRIDINFER_GPU_KERNELS")
    if device.type != "cuda" and kernels == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the Triton kernels run on the CPU device only interpreted: set TRITON_INTERPRET=1")
    return device


def report(machine: dict, shape: str, formats: list[str], contexts: list[int], pool_mb: int, repeats: int,
           as_json: bool, echo: Callable[[str], None]) -> None:
    """`run`, its rows as table lines through `echo` as they are measured, or one JSON object at the end."""
    rows: list[dict] = []

    def emit(measured: dict) -> None:
        rows.append(measured)
        if not as_json:
            echo(table_line(measured))

    if not as_json:
        echo(f"{machine_line(machine)}; pools of ~{pool_mb} MB per kernel")
        echo("\n".join(HEADER))
    run(machine, shape, formats, contexts, pool_mb, repeats, emit)
    if as_json:
        echo(json.dumps({"machine": machine, "pool_mb": pool_mb, "results": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="13b", choices=sorted(SHAPES))
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help="comma-separated: " + ", ".join(FORMATS))
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="attention: positions already cached")
    parser.add_argument("--pool-mb", type=int, default=POOL_MB, help="bytes of distinct copies per kernel (>> L2)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gpu-kernels", choices=["triton", "torch"], default=None)
    parser.add_argument("--json", action="store_true", help="one JSON object at the end instead of the table")
    args = parser.parse_args()
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
    except ValueError:
        parser.error(f"--contexts: expected numbers like 512,4096, got {args.contexts!r}")
    try:
        check_formats(args.formats.split(","))
    except ValueError as error:
        parser.error(f"--formats: {error}")
    if min(contexts) < 1 or args.pool_mb < 1 or args.repeats < 1:
        parser.error("--contexts, --pool-mb and --repeats take positive numbers")
    try:
        device = device_for(args.device, args.gpu_kernels)
    except ValueError as error:
        parser.error(str(error))
    report(machine_figures(device, args.gpu_kernels), args.shape, args.formats.split(","), contexts, args.pool_mb,
           args.repeats, args.json, lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
