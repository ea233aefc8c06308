"""The hybrid FFN: each layer's neurons split by a placement into hot (GPU side) and cold (CPU side).

For one token:
  1. the mask source picks candidate neurons: a predictor (`predictors`), or every neuron (`exact`: the
     activation itself then decides, losslessly);
  2. the cold candidates go to a worker thread that runs the numba kernel (gate rows, FATReLU, S2 up rows,
     S3 down rows) without the GIL;
  3. meanwhile the GPU side computes its hot neurons as compact matrices (gate/up rows, rows of the
     transposed down projection), masked by the candidates;
  4. the CPU half is copied over and added to the GPU half.
Several tokens at once (prefill) use the dense form of both halves (act(gate) * up * mask @ down).

Both sides run on torch devices, so without CUDA the "GPU side" is the CPU device and all of this runs and is
tested on any machine.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .config import ModelConfig
from .errors import HybridInferError
from .kernels import cpu_sparse
from .model import ffn_activation
from .weights import LayerWeights, ModelWeights


@dataclass
class HybridStats:
    """Sums over single-token FFN calls (decoding), for the per-run report."""

    calls: int = 0  # layer-token pairs
    gpu_active: int = 0  # neurons that fired on the GPU side
    cpu_active: int = 0  # neurons that fired on the CPU side
    gpu_bytes: int = 0  # FFN weight bytes read on the GPU side
    cpu_bytes: int = 0  # FFN weight bytes read on the CPU side
    gpu_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def reset(self) -> None:
        self.__init__()


class _HotLayer:
    """One layer's hot neurons on the GPU side: gate and up rows, and rows of the transposed down projection."""

    def __init__(self, layer: LayerWeights, hot: np.ndarray, device, dtype):
        index = torch.from_numpy(hot)
        self.neurons = hot
        self.gate = layer.ffn_gate[index].to(device, dtype)  # (n_hot, n_embd)
        self.up = layer.ffn_up[index].to(device, dtype)  # (n_hot, n_embd)
        self.down_t = layer.ffn_down[:, index].T.contiguous().to(device, dtype)  # (n_hot, n_embd)


class _ColdLayer:
    """One layer's cold neurons in CPU memory, as numba reads them (float32, down projection transposed)."""

    def __init__(self, layer: LayerWeights, cold: np.ndarray):
        self.neurons = cold
        self.gate = np.ascontiguousarray(layer.ffn_gate.numpy()[cold])  # (n_cold, n_embd)
        self.up = np.ascontiguousarray(layer.ffn_up.numpy()[cold])
        self.down_t = np.ascontiguousarray(layer.ffn_down.numpy()[:, cold].T)
        self.all_rows = np.arange(len(cold), dtype=np.int64)


class HybridFFN:
    def __init__(self, config: ModelConfig, weights: ModelWeights, hot: list[np.ndarray], device: str,
                 dtype: torch.dtype = torch.float32, predictors=None):
        if config.activation == "silu":
            raise HybridInferError("the hybrid runtime needs a ReLU or FATReLU model; this model's FFN uses SiLU")
        self.config, self.predictors = config, predictors
        self.device, self.dtype = torch.device(device), dtype
        self.threshold = float(config.activation_threshold)
        self.hot, self.cold = [], []
        for layer, hot_neurons in zip(weights.layers, hot):
            cold_neurons = np.setdiff1d(np.arange(config.n_ff), hot_neurons).astype(np.int64)
            self.hot.append(_HotLayer(layer, np.asarray(hot_neurons, dtype=np.int64), self.device, dtype))
            self.cold.append(_ColdLayer(layer, cold_neurons))
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-ffn")
        self.stats = HybridStats()
        self.row_bytes = config.n_embd * torch.tensor([], dtype=dtype).element_size()

    @property
    def n_hot(self) -> int:
        return sum(len(h.neurons) for h in self.hot)

    def __call__(self, index: int, layer: LayerWeights, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        predicted = self.predictors.active(index, residual) if self.predictors is not None else None  # (T, n_ff)
        if x.shape[0] == 1:
            return self._one_token(index, x, None if predicted is None else predicted[0].cpu().numpy())
        return self._dense(index, x, predicted)

    def _one_token(self, index: int, x: torch.Tensor, predicted: np.ndarray | None) -> torch.Tensor:
        hot, cold = self.hot[index], self.cold[index]
        x_cpu = np.ascontiguousarray(x[0].float().cpu().numpy())
        rows = cold.all_rows if predicted is None else np.flatnonzero(predicted[cold.neurons]).astype(np.int64)
        cpu_out = np.empty(self.config.n_embd, dtype=np.float32)
        pending = self.worker.submit(self._cold_part, cold, x_cpu, rows, cpu_out)
        start = time.perf_counter()
        gate = hot.gate @ x[0]  # (n_hot,)
        act = ffn_activation(gate, self.config)
        if predicted is not None:
            act = act * torch.from_numpy(predicted[hot.neurons]).to(self.device, self.dtype)
        out = (act * (hot.up @ x[0])) @ hot.down_t  # (n_embd,)
        n_fired = int((act != 0).sum())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stats.gpu_seconds += time.perf_counter() - start
        cpu_active, cpu_seconds = pending.result()
        s = self.stats
        s.calls += 1
        s.gpu_active += n_fired
        s.cpu_active += cpu_active
        s.gpu_bytes += (3 * len(hot.neurons)) * self.row_bytes
        s.cpu_bytes += (len(rows) + 2 * cpu_active) * self.config.n_embd * 4
        s.cpu_seconds += cpu_seconds
        return (out + torch.from_numpy(cpu_out).to(self.device, self.dtype))[None]

    def _cold_part(self, cold: _ColdLayer, x: np.ndarray, rows: np.ndarray, out: np.ndarray) -> tuple[int, float]:
        start = time.perf_counter()
        active = cpu_sparse.sparse_ffn(cold.gate, cold.up, cold.down_t, x, rows, self.threshold, out)
        return active, time.perf_counter() - start

    def _dense(self, index: int, x: torch.Tensor, predicted: torch.Tensor | None) -> torch.Tensor:
        hot, cold = self.hot[index], self.cold[index]
        hot_hidden = ffn_activation(x @ hot.gate.T, self.config) * (x @ hot.up.T)  # (T, n_hot)
        x_cpu = x.float().cpu()
        cold_gate, cold_up = torch.from_numpy(cold.gate), torch.from_numpy(cold.up)
        cold_hidden = ffn_activation(x_cpu @ cold_gate.T, self.config) * (x_cpu @ cold_up.T)  # (T, n_cold)
        if predicted is not None:
            hot_hidden = hot_hidden * predicted[:, torch.from_numpy(hot.neurons)].to(self.device, self.dtype)
            cold_hidden = cold_hidden * predicted.cpu()[:, torch.from_numpy(cold.neurons)].float()
        cold_out = cold_hidden @ torch.from_numpy(cold.down_t)
        return hot_hidden @ hot.down_t + cold_out.to(self.device, self.dtype)


def hybrid_report(engine) -> dict | None:
    """Per decoded token: FFN work share per side, times in attention / GPU FFN / CPU FFN, bytes read per side."""
    hybrid = engine.hybrid
    if hybrid is None or hybrid.stats.calls == 0:
        return None
    s, n_layer = hybrid.stats, engine.config.n_layer
    tokens = s.calls / n_layer
    fired = max(s.gpu_active + s.cpu_active, 1)
    return {
        "device": str(hybrid.device),
        "hot_neurons": hybrid.n_hot,
        "gpu_ffn_share": s.gpu_active / fired,
        "cpu_ffn_share": s.cpu_active / fired,
        "attention_ms_per_token": engine.model.attention_seconds / tokens * 1000,
        "gpu_ffn_ms_per_token": s.gpu_seconds / tokens * 1000,
        "cpu_ffn_ms_per_token": s.cpu_seconds / tokens * 1000,
        "gpu_ffn_mb_per_token": s.gpu_bytes / tokens / 1e6,
        "cpu_ffn_mb_per_token": s.cpu_bytes / tokens / 1e6,
    }


def report_lines(report: dict) -> list[str]:
    return [
        f"hybridinfer_hybrid: FFN activations {100 * report['cpu_ffn_share']:.0f}%/{100 * report['gpu_ffn_share']:.0f}% "
        f"CPU/GPU ({report['device']}, {report['hot_neurons']} hot neurons)",
        f"hybridinfer_hybrid: per token: attention {report['attention_ms_per_token']:.2f} ms, GPU FFN "
        f"{report['gpu_ffn_ms_per_token']:.2f} ms, CPU FFN {report['cpu_ffn_ms_per_token']:.2f} ms (concurrent); "
        f"FFN weights read: GPU {report['gpu_ffn_mb_per_token']:.2f} MB, CPU {report['cpu_ffn_mb_per_token']:.2f} MB",
    ]
