"""The decode table's model of one token (`make gpu-check`, issue 31's "honest table"): beside each configuration's
measured ms per token, what it would take if each side read its bytes at the bandwidth measured in the same
process, every kernel launch cost the launch time measured there, and every copy between the sides the copy time
measured there. Both the measured and the modelled columns add up to their totals.

The model is a lower bound, by construction:
- bytes: every matrix a token reads whole (attention, predictors, dense FFNs, the output projection), the KV cache
  up to the positions decoded, and of the sparse FFNs only the rows of the neurons that fired (gate, up and down
  rows; a predictor's false positives are reads it does not count);
- bandwidth: a device-to-device copy (reads and writes, counted both), on the GPU side's device and on the CPU;
- launches: those of one decoded token, counted by `gpu/launches.Launches`, times one small op's launch time (a
  CUDA graph's replay counted as one: the kernels it holds are not launched one by one);
- copies: the residual stream and logits across the boundary, a split FFN's input, mask and CPU half, each at the
  measured latency of a small copy plus its bytes at the measured host-device bandwidth.
On the CPU stand-in device both sides are this machine's cores and memory: the model's columns still add up,
but "GPU" there is torch on the CPU.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from hybridinfer.eval.gpu_kernel_bench import copy_gbs
from hybridinfer.gpu.launches import Launches
from hybridinfer.hybrid.split_ffn import SplitFFN


@dataclass
class Probe:
    """What the machine does, measured in the process that decodes."""

    device_gbs: float  # the GPU side's device: copy bandwidth, GB/s (bytes read + written)
    cpu_gbs: float  # this machine's memory, the same way
    launch_us: float  # one small kernel launch on the device, queued back to back
    copy_us: float  # one small host <-> device copy, waited for
    link_gbs: float  # host -> device bandwidth of a large copy


def _best_seconds(run, sync, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def probe(device: torch.device, n_embd: int, large_mib: int = 256) -> Probe:
    """Measure the figures the model uses (a second or two)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    nbytes = large_mib << 20
    device_gbs = copy_gbs(device, nbytes)
    cpu_gbs = copy_gbs(torch.device("cpu"), nbytes) if cuda else device_gbs
    small = torch.zeros(1, device=device)
    n = 2000
    launch_us = _best_seconds(lambda: [small.add_(1) for _ in range(n)], sync, 3) / n * 1e6
    host = torch.ones((1, n_embd), dtype=torch.float32, pin_memory=cuda)
    on_device = torch.empty((1, n_embd), dtype=torch.float32, device=device)

    def round_trips():
        for _ in range(100):
            on_device.copy_(host, non_blocking=True)
            sync()
            host.copy_(on_device)

    copy_us = _best_seconds(round_trips, sync, 3) / 200 * 1e6
    big_host = torch.ones(nbytes // 4, dtype=torch.uint8, pin_memory=cuda)
    big_device = torch.empty_like(big_host, device=device)
    link_gbs = big_host.numel() / _best_seconds(lambda: big_device.copy_(big_host, non_blocking=True), sync) / 1e9
    return Probe(device_gbs, cpu_gbs, launch_us, copy_us, link_gbs)


def launches_per_token(engine, history: list[int]) -> tuple[int, dict]:
    """Kernels launched (and copies made) by one decoded token after `history` (its last token new), and CUDA graphs
    replayed (`hybrid/decode_graphs.py`)."""
    graphed = engine.model.graphed
    replays = graphed.replays if graphed is not None else 0
    with Launches() as launches:
        engine.feed(history)
    if graphed is not None and graphed.graphs.cuda:  # the CPU device's twin replays each kernel, seen above
        launches.by_name["cuda graph replays"] += graphed.replays - replays
    return launches.total, dict(launches.by_name)


def _matrices_bytes(*matrices) -> int:
    return sum(m.nbytes for m in matrices if m is not None)


def token_bytes(engine, positions: int) -> dict:
    """Bytes one decoded token reads on each side (the lower bound of the module doc), from the run's statistics
    (`engine.gpu_side.stats` over the decoded tokens); `positions`: the KV cache's length while decoding."""
    side, c = engine.gpu_side, engine.config
    weights = engine.model.weights
    tokens = max(side.stats.tokens, 1)
    kv_row = 2 * c.n_head_kv * c.head_dim * positions  # K and V elements read per layer
    gpu = cpu = 0
    hot_row = cold_row = 0
    for index, layer in enumerate(weights.layers):
        on_gpu = side.layers.get(index)
        if on_gpu is not None:
            gpu += _matrices_bytes(on_gpu.qkv, on_gpu.wo, on_gpu.fc1, on_gpu.fc2)
            gpu += kv_row * on_gpu.k_cache.element_size()
            if on_gpu.dense:
                gpu += _matrices_bytes(on_gpu.gate, on_gpu.up, on_gpu.down)
                continue
            if len(on_gpu.hot):
                hot_row = _matrices_bytes(on_gpu.gate, on_gpu.up, on_gpu.down_t) // len(on_gpu.hot)
        else:
            key_type, value_type = engine.cache_types
            cpu += _matrices_bytes(layer.attn_qkv, layer.attn_output)
            cpu += int(kv_row / 2 * (key_type.bytes_per_value + value_type.bytes_per_value))
        cold_row = layer.ffn_gate.row_bytes + layer.ffn_up.row_bytes + layer.ffn_down_t().row_bytes
        if on_gpu is None and side.cpu_layers_stats is None:  # a dense CPU layer (-ngl)
            cpu += layer.ffn_gate.nbytes + layer.ffn_up.nbytes + layer.source_down.n_bytes
    gpu += hot_row * side.stats.gpu_fired // tokens
    cpu += cold_row * side.stats.cpu_fired // tokens  # the split FFNs' CPU halves
    layers_stats = side.cpu_layers_stats
    if layers_stats is not None and layers_stats.tokens:
        cpu += cold_row * layers_stats.active // tokens  # the CPU layers' sparse FFNs
    if side.output is not None:
        gpu += _matrices_bytes(side.output)
    elif weights.output is not None:
        cpu += weights.output.nbytes
    return {"gpu_bytes": gpu, "cpu_bytes": cpu}


def token_copies(engine) -> dict:
    """Copies between the sides per decoded token, and their bytes."""
    side, c = engine.gpu_side, engine.config
    copies = nbytes = 0
    gpu = [index in side.layers for index in range(c.n_layer)]
    crossings = sum(1 for before, after in zip([False] + gpu, gpu + [side.output is not None]) if before != after)
    copies += crossings
    nbytes += crossings * c.n_embd * 4
    splits = [part for parts in engine.model.layers for part in parts if isinstance(part, SplitFFN)]
    cold = splits[0].cold if splits else None
    for index, layer in side.layers.items():
        if layer.dense or cold is None or not cold.has_neurons(index):
            continue
        copies += 3 if layer.fc1 is not None else 2  # FFN input down (+ mask), the CPU half up
        nbytes += 2 * c.n_embd * 4 + (c.n_ff if layer.fc1 is not None else 0)
    if side.output is not None:
        copies += 1
        nbytes += c.n_vocab * 4
    return {"copies": copies, "copy_bytes": nbytes}


def model_row(measured_ms: float, report: dict, machine: Probe, nbytes: dict, copies: dict, launches: int) -> dict:
    """The table's columns: measured (its parts and what no part timed) and modelled (its parts), each adding up."""
    gpu_ms, cpu_ms = report.get("gpu_ms_per_token", 0.0), report.get("cpu_ms_per_token", 0.0)
    transfer_ms = report.get("transfer_ms_per_token", 0.0)
    model = {
        "model_gpu_ms": nbytes["gpu_bytes"] / machine.device_gbs / 1e6,
        "model_launch_ms": launches * machine.launch_us / 1e3,
        "model_cpu_ms": nbytes["cpu_bytes"] / machine.cpu_gbs / 1e6,
        "model_copy_ms": copies["copies"] * machine.copy_us / 1e3 + copies["copy_bytes"] / machine.link_gbs / 1e6,
    }
    model["model_ms"] = sum(model.values())
    return {"measured_ms": measured_ms, "gpu_ms": gpu_ms, "cpu_ms": cpu_ms, "transfer_ms": transfer_ms,
            "other_ms": measured_ms - gpu_ms - cpu_ms - transfer_ms, "launches": launches, **nbytes, **copies,
            **model, "probe": asdict(machine)}
