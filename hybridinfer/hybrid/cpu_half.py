"""The CPU half of a split FFN: a GPU layer's cold neurons, computed by the packed kernels on a worker thread.

For one token the GPU side sends the FFN input (RMS-normed, n_embd floats) and, with predictors, the predicted
mask (n_ff bytes) down into pinned buffers; the worker waits for that copy, picks its candidates (the cold
neurons, or the predicted cold neurons), and runs the same numba block as the packed sparse FFN (gate rows, S2
up rows, S3 down_t rows of the packed matrices, read in place; the hot rows are simply never read), releasing
the GIL, while the main thread queues the GPU half. Its output (n_embd floats) goes back up.

Several tokens (a prompt) run here on the main thread: gate and up densely, masked to the cold (and predicted)
neurons, and each token's active rows of down_t.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numba
import numpy as np
import torch

from ..model_file.config import ModelConfig
from ..kernels import cpu_layer, cpu_ops
from ..kernels.cpu_quant import activation_buffers, matmul
from ..runtime.sparse_ffn import PackedSparseFFN
from ..runtime.weights import PackedLayer


def _host(shape, dtype, pinned: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


class CPUHalf:
    def __init__(self, config: ModelConfig, sparse: PackedSparseFFN, layers: list[PackedLayer],
                 hot: dict[int, np.ndarray], device: torch.device):
        n_ff, n_embd = config.n_ff, config.n_embd
        self.config, self.sparse, self.layers, self.device = config, sparse, layers, device
        self.cold_mask = {}
        self.cold = {}
        for index, neurons in hot.items():
            mask = np.ones(n_ff, dtype=bool)
            mask[neurons] = False
            self.cold_mask[index], self.cold[index] = mask, np.flatnonzero(mask).astype(np.int64)
        pinned = device.type == "cuda"
        self.normed_host = _host((1, n_embd), torch.float32, pinned)  # the FFN input, sent down
        self.mask_host = _host((n_ff,), torch.bool, pinned)  # the predicted mask, sent down
        self.out_host = _host((1, n_embd), torch.float32, pinned)  # the CPU half's output, sent up
        self.normed = activation_buffers(1, n_embd)  # the kernels' aligned copy, with its int8 blocks
        self.scratch = np.zeros((1, n_embd), np.float32)  # the block adds its output here too; unused
        self.candidates = np.empty(n_ff, np.int64)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-half")
        self.ready = torch.cuda.Event() if pinned else None
        self.fired = 0
        self.seconds = 0.0

    def submit(self, index: int, normed: torch.Tensor, mask: torch.Tensor | None) -> Future:
        """Send one token's FFN input (1, n_embd) and mask (n_ff,) down and start the cold neurons' FFN."""
        self.normed_host.copy_(normed, non_blocking=True)
        if mask is not None:
            self.mask_host.copy_(mask, non_blocking=True)
        if self.ready is not None:
            self.ready.record()
        return self.worker.submit(self._one_token, index, mask is not None)

    def collect(self, pending: Future) -> torch.Tensor:
        """Wait for the CPU half and send its output (n_embd,) up."""
        pending.result()
        return self.out_host[0].to(self.device, non_blocking=True)

    def _one_token(self, index: int, predicted: bool) -> None:
        if self.ready is not None:
            self.ready.synchronize()
        start = time.perf_counter()
        self.normed.x[:] = self.normed_host.numpy()
        cpu_layer.prepare(self.normed)
        if predicted:
            chosen = np.flatnonzero(self.mask_host.numpy() & self.cold_mask[index])
        else:
            chosen = self.cold[index]
        count = chosen.shape[0]
        self.candidates[:count] = chosen
        layer, s = self.layers[index], self.sparse
        self.scratch[:] = 0
        block = cpu_layer.sparse_ffn_block(*layer.ffn_codes, s.float_activations)
        self.fired += block(
            self.scratch, self.normed, layer.ffn_gate.raw, layer.ffn_up.raw, s.down_t[index].raw, s.threshold,
            False, self.candidates, count, s.gate, s.active, s.up, s.hidden, self.out_host.numpy(), np.float32(1.0),
            numba.get_num_threads())
        self.seconds += time.perf_counter() - start

    def several(self, index: int, normed: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """T tokens' cold neurons: normed (T, n_embd), mask (T, n_ff) bool or None -> (T, n_embd) on the device."""
        layer, s = self.layers[index], self.sparse
        x = np.ascontiguousarray(normed.float().cpu().numpy())
        tokens, n_ff = x.shape[0], self.config.n_ff
        act = activation_buffers(tokens, x.shape[1], x=x)
        cpu_layer.prepare(act)
        gate, up, hidden = (np.empty((tokens, n_ff), np.float32) for _ in range(3))
        matmul(layer.ffn_gate, act, gate, float_activations=s.float_activations)
        matmul(layer.ffn_up, act, up, float_activations=s.float_activations)
        cpu_ops.fatrelu_times(gate, up, s.threshold, hidden)
        hidden *= self.cold_mask[index]
        if mask is not None:
            hidden *= mask.cpu().numpy()
        out = np.empty((tokens, x.shape[1]), np.float32)
        down_t = s.down_t[index]
        cpu_layer.sparse_down(down_t.code, s.float_activations)(hidden, down_t.raw, s.active, s.hidden, out,
                                                              numba.get_num_threads())
        return torch.from_numpy(out).to(self.device)
