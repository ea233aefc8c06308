"""What the hybrid runtime measures per decoded token: the time of each side and of the transfers between them,
and how the FFN's work divides between the sides.

On CUDA the GPU side's time is measured with CUDA events (its kernels run asynchronously), two per timed section,
only when $HYBRIDINFER_GPU_TIMING is 1 (off by default: events are launches too); the CPU side's time is always
measured. On the CPU stand-in device every side runs on this machine's cores, timed by the CPU's clock, so the
sides' times include the cores they take from each other.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class HybridStats:
    """Sums over single-token forward passes (decoding)."""

    tokens: int = 0
    gpu_seconds: float = 0.0  # the GPU side's work: attention, predictors, hot neurons, dense FFNs, output
    cpu_seconds: float = 0.0  # the CPU side's work: cold neurons of GPU layers, whole CPU layers, CPU output
    transfer_seconds: float = 0.0  # FFN inputs down, CPU halves up, the residual stream across the boundary
    gpu_fired: int = 0  # neurons that fired on the GPU side
    cpu_fired: int = 0  # neurons that fired on the CPU side (cold neurons of GPU layers and CPU layers)
    _pending: list = field(default_factory=list, repr=False)  # CUDA (kind, start, end) events not yet summed

    def reset(self) -> None:
        self.__init__()


TIMING_ENV = "HYBRIDINFER_GPU_TIMING"


class Clock:
    """The one clock of a hybrid run: sections of the GPU side and of the transfers, timed on the device's own
    clock, and the CPU side's time (`add("cpu", seconds)`: the CPU parts, the split FFNs' CPU halves)."""

    def __init__(self, device: torch.device, stats: HybridStats, events: bool | None = None):
        """`events`: time the GPU side with CUDA events (None: $HYBRIDINFER_GPU_TIMING == "1"); CUDA only."""
        self.cuda = device.type == "cuda"
        self.events = self.cuda and (events if events is not None else os.environ.get(TIMING_ENV) == "1")
        self.stats = stats
        self._paused = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time nothing for the duration (a graph's capture: its replays are timed instead)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @property
    def times_the_gpu(self) -> bool:
        return self.events or not self.cuda

    def start(self):
        if self._paused:
            return None
        if self.cuda:
            if not self.events:
                return None
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, kind: str, started) -> None:
        """Add the time since `started` to `kind` ("gpu" or "transfer"); nothing where `start` timed nothing."""
        if started is None:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stats._pending.append((kind, started, event))
            return
        self.add(kind, time.perf_counter() - started)

    def flush(self) -> None:
        """Sum the finished CUDA sections (call after a synchronisation, e.g. at the end of a token)."""
        for kind, start, end in self.stats._pending:
            self.add(kind, start.elapsed_time(end) / 1000)
        self.stats._pending.clear()

    def add(self, kind: str, seconds: float) -> None:
        """Add `seconds` to `kind`: "gpu", "transfer" or "cpu"."""
        if kind == "gpu":
            self.stats.gpu_seconds += seconds
        elif kind == "cpu":
            self.stats.cpu_seconds += seconds
        else:
            self.stats.transfer_seconds += seconds


def hybrid_report(engine) -> dict | None:
    """Per decoded token: ms of each side and of the transfers, the FFN's fired neurons per side."""
    side = engine.gpu_side
    if side is None or side.stats.tokens == 0:
        return None
    s = side.stats
    cpu_fired = s.cpu_fired + (side.cpu_layers_stats.active if side.cpu_layers_stats is not None else 0)
    fired = max(s.gpu_fired + cpu_fired, 1)
    cpu_ms = s.cpu_seconds / s.tokens * 1000
    return {
        "device": str(side.device),
        "gpu_kernels": side.kernels_name,
        "gpu_layers": len(side.layers),
        "dense_gpu_layers": sum(1 for layer in side.layers.values() if layer.dense),
        "output_on_gpu": side.output is not None,
        "hot_neurons": side.n_hot,
        "gpu_bytes": side.nbytes,
        "gpu_ffn_share": s.gpu_fired / fired,
        "cpu_ffn_share": cpu_fired / fired,
        "gpu_timed": side.clock.times_the_gpu,  # False: the GPU and transfer ms below are 0, not measured
        "gpu_ms_per_token": s.gpu_seconds / s.tokens * 1000,
        "cpu_ms_per_token": cpu_ms,
        "transfer_ms_per_token": s.transfer_seconds / s.tokens * 1000,
        "cpu_bound_tokens_per_second": 1000 / cpu_ms if cpu_ms > 0 else 0.0,
    }


def report_lines(report: dict) -> list[str]:
    gib = report["gpu_bytes"] / 2**30
    gpu, transfers = f"{report['gpu_ms_per_token']:.2f} ms", f"{report['transfer_ms_per_token']:.2f} ms"
    if not report["gpu_timed"]:
        gpu, transfers = f"not timed ({TIMING_ENV}=1 times it)", "not timed"
    output = "and the output projection " if report["output_on_gpu"] else ""
    return [
        f"hybridinfer_hybrid: GPU side on {report['device']} ({report['gpu_kernels']} kernels, {gib:.2f} GiB): "
        f"{report['gpu_layers']} layers ({report['dense_gpu_layers']} dense) {output}with {report['hot_neurons']} "
        f"hot neurons; FFN activations {100 * report['cpu_ffn_share']:.0f}%/{100 * report['gpu_ffn_share']:.0f}% "
        "CPU/GPU",
        f"hybridinfer_hybrid: per token: GPU side {gpu}, CPU side "
        f"{report['cpu_ms_per_token']:.2f} ms ({report['cpu_bound_tokens_per_second']:.2f} tokens/s if the GPU side "
        f"kept up), transfers {transfers}",
    ]
