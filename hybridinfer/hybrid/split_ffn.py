"""The split FFN part (`runtime/parts.py`'s protocol, over s.on_device): a GPU layer's hot neurons on the GPU, its
cold neurons on the CPU, summed. The only code that knows that the two halves may overlap.

One token, x (1, n_embd) on the device, all on the decoding thread, in five steps (`decode_graphs.py`):
    Device  mask = predictor(x); normed = RMSNorm(x)              (two GEMVs, the second also writing normed beside
            normed, mask -> host                                   the mask; down: n_embd floats + n_ff bytes, pinned)
    Host    mark the copy down (a CUDA event)
    Device  hot = S3(S2(hot gate/up rows, normed, mask))          (queued, not waited for)
    Host    cold = the CPU half (`ColdHalf.run`)                  (once the copy down has arrived; the CPU computes
                                                                   while the GPU computes hot)
    Device  cold -> device; x += residual_scale * (hot + cold)    (up: n_embd floats; the sum RMS-normed first
                                                                   where the model has a post-FFN norm)
GPU work is queued asynchronously, so the decoding thread itself computes the cold half once the copy down has
arrived: no thread hand-off, and the run's `-t` threads. `ColdHalf` picks its candidates (the cold neurons, or the
predicted cold ones) and runs the packed sparse FFN block over the CPU's packed weights (the hot rows are simply
never read) in its own scratch: nothing it writes is shared with a CPU layer's part. A layer with no cold neuron
(a budget that holds them all) is one device step and sends nothing; a token whose predicted cold candidates are
none skips the CPU block (its half is zeros). On the CPU stand-in device the GPU half is computed before the CPU
half, each side's time its own.

Several tokens (a prompt): the hot neurons' gate and up densely on the device, the cold ones' by the packed
kernels, masked to the cold (and predicted) neurons, and each token's active rows of down_t.
"""

from __future__ import annotations

import copy
import time
from functools import partial

import numba
import numpy as np
import torch

from ..kernels import cpu_layer, cpu_ops
from ..kernels.block_args import BoundCall, FFNWeights, SparseFFNScratch
from ..kernels.cpu_quant import activation_buffers, matmul
from ..model_file.config import ModelConfig
from ..runtime.weights import PackedWeights
from .decode_graphs import Device, Host, run_steps
from .gpu_parts import ffn_input, handed_ffn_input
from .gpu_side import GPULayer, GPUSide


def _host(shape, dtype, pinned: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=pinned)


def _halves(packet: torch.Tensor, n_embd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The views (1, n_embd) float32 and (n_ff,) bool of a packet of 4 n_embd + n_ff bytes."""
    return packet[:4 * n_embd].view(torch.float32).view(1, n_embd), packet[4 * n_embd:].view(torch.bool)


class ColdHalf:
    """The cold neurons of the split layers, by the packed kernels on the decoding thread (with the run's `-t`
    threads), in their own scratch."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, hot: dict[int, np.ndarray],
                 device: torch.device, float_activations: bool):
        n_ff, n_embd = config.n_ff, config.n_embd
        self.config, self.weights, self.device = config, weights, device
        self.float_activations = bool(float_activations)
        self.threshold = np.float32(config.activation_threshold)
        self.cold_mask, self.cold = {}, {}
        for index, neurons in hot.items():
            mask = np.ones(n_ff, dtype=bool)
            mask[neurons] = False
            self.cold_mask[index], self.cold[index] = mask, np.flatnonzero(mask).astype(np.int64)
        pinned = device.type == "cuda"
        # one token's FFN input (1, n_embd) float32 and predicted mask (n_ff,) bool, sent down in one copy: staged
        # side by side on the device (the predictor's threshold kernel writes both) and received side by side
        self.staged = torch.empty(4 * n_embd + n_ff, dtype=torch.uint8, device=device)
        self.packet_host = _host((4 * n_embd + n_ff,), torch.uint8, pinned)
        self.normed_staged, self.mask_staged = _halves(self.staged, n_embd)
        self.normed_host, self.mask_host = _halves(self.packet_host, n_embd)
        self.out_host = _host((1, n_embd), torch.float32, pinned)  # the CPU half's output, sent up ...
        self.out_device = torch.empty((1, n_embd), dtype=torch.float32, device=device)  # ... here
        self.normed = activation_buffers(1, n_embd)  # the kernels' aligned copy, with its int8 blocks
        self.unused_x = np.zeros((1, n_embd), np.float32)  # the block adds its output here too; unused
        self.candidates = np.empty(n_ff, np.int64)
        self.scratch = SparseFFNScratch(*(np.empty(n_ff, np.float32) for _ in range(3)), np.empty(n_ff, np.int64),
                                        self.out_host.numpy())
        self._weights: dict[int, FFNWeights] = {}
        self._blocks: dict[int, BoundCall] = {}
        self.ready = torch.cuda.Event() if pinned else None

    def has_neurons(self, index: int) -> bool:
        """Whether layer `index` keeps any neuron on the CPU (none: its FFN is the GPU's alone, nothing is sent)."""
        return self.cold[index].shape[0] > 0

    def send(self, normed: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Queue the copy of one token's FFN input (1, n_embd) and mask (n_ff,) down to the host: one copy where
        both are the staged ones (`normed_staged`, `mask_staged`), else one each."""
        if mask is not None and mask.data_ptr() == self.mask_staged.data_ptr() and \
                normed.data_ptr() == self.normed_staged.data_ptr():
            self.packet_host.copy_(self.staged, non_blocking=True)
        else:
            self.normed_host.copy_(normed, non_blocking=True)
            if mask is not None:
                self.mask_host.copy_(mask, non_blocking=True)

    def sent(self) -> None:
        """Mark the copies queued so far (`run` waits for them, not for the GPU work queued after)."""
        if self.ready is not None:
            self.ready.record()

    def run(self, index: int, predicted: bool) -> tuple[int, float]:
        """Wait for the copies `send` queued and `sent` marked, then the cold neurons' FFN into out_host (zeros where
        no cold neuron is a candidate): (the neurons that fired, the seconds it took on the CPU)."""
        if self.ready is not None:
            self.ready.synchronize()
        start = time.perf_counter()
        if predicted:
            chosen = np.flatnonzero(self.mask_host.numpy() & self.cold_mask[index])
        else:
            chosen = self.cold[index]
        count = chosen.shape[0]
        if count == 0:
            self.out_host.zero_()
            return 0, time.perf_counter() - start
        self.candidates[:count] = chosen
        self.normed.x[:] = self.normed_host.numpy()
        cpu_layer.prepare(self.normed, self.weights.layers[index].ffn_codes[0])
        self.unused_x[:] = 0
        fired = self._block(index)(self.unused_x, self.normed, self._weights[index], self.candidates, count,
                                   self.scratch, numba.get_num_threads())
        return fired, time.perf_counter() - start

    def upload(self) -> torch.Tensor:
        """Queue the copy of `run`'s output up to the device: (1, n_embd) there."""
        return self.out_device.copy_(self.out_host, non_blocking=True)

    def _block(self, index: int) -> BoundCall:
        block = self._blocks.get(index)
        if block is None:
            layer = self.weights.layers[index]
            self._weights[index] = FFNWeights(layer.ffn_gate.raw, layer.ffn_up.raw, layer.ffn_down_t().raw,
                                              self.threshold, False, np.float32(1.0))
            block = self._blocks[index] = BoundCall(cpu_layer.sparse_ffn_block(
                *layer.ffn_codes[:2], layer.ffn_down_t().code, self.float_activations))
        return block

    def several(self, index: int, normed: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """T tokens' cold neurons: normed (T, n_embd), mask (T, n_ff) bool or None -> (T, n_embd) on the device."""
        layer, fa = self.weights.layers[index], self.float_activations
        x = np.ascontiguousarray(normed.float().cpu().numpy())
        tokens, n_ff = x.shape[0], self.config.n_ff
        act = activation_buffers(tokens, x.shape[1], x=x)
        cpu_layer.prepare(act, layer.ffn_codes[0])
        gate, up, hidden = (np.empty((tokens, n_ff), np.float32) for _ in range(3))
        matmul(layer.ffn_gate, act, gate, float_activations=fa)
        matmul(layer.ffn_up, act, up, float_activations=fa)
        cpu_ops.fatrelu_times(gate, up, self.threshold, hidden)
        hidden *= self.cold_mask[index]
        if mask is not None:
            hidden *= mask.cpu().numpy()
        out = np.empty((tokens, x.shape[1]), np.float32)
        down_t = layer.ffn_down_t()
        cpu_layer.sparse_down(down_t.code, fa)(hidden, down_t.raw, self.scratch.active, self.scratch.hidden, out,
                                               numba.get_num_threads())
        return torch.from_numpy(out).to(self.device)


class SplitFFN:
    """x += residual_scale * (hot half on the GPU + cold half on the CPU). `predicting` False: every neuron is a
    candidate (the predictors ignored: the dense twin, exact)."""

    def __init__(self, side: GPUSide, cold: ColdHalf, predicting: bool = True):
        self.side, self.cold, self.config = side, cold, side.config
        self.predicting = predicting
        self._inputs: dict[int, tuple] = {}  # one token's (normed, mask) per layer, between its steps
        self._hot: dict[int, torch.Tensor] = {}  # ... and its hot half

    def __call__(self, index: int, s) -> None:
        x = s.on_device
        if x.shape[0] == 1:
            run_steps(self.decode_steps(index), s)
            return
        side, layer, c = self.side, self.side.layers[index], self.config
        started = side.clock.start()
        normed = ffn_input(side, index, x, layer)  # (T, n_embd)
        mask, hot_mask = self.predict(layer, x) if self._predicting(layer) else (None, None)  # (T, n_ff), (T, n_hot)
        hot = self._several(index, layer, normed, mask, hot_mask, started)
        s.on_device = side.norms.add(x, hot, c.residual_scale, post_norm=layer.post_ffw_norm, eps=c.rms_eps)

    def _predicting(self, layer: GPULayer) -> bool:
        return layer.fc1 is not None and self.predicting

    def decode_steps(self, index: int) -> list:
        """One token's steps (the module's doc): one device step where the layer has no cold neuron."""
        if not self.cold.has_neurons(index):
            return [Device(partial(self._gpu_only, index))]
        return [Device(partial(self._send_down, index)), Host(lambda s: self.cold.sent()),
                Device(partial(self._hot_half, index)), Host(partial(self._cold_half, index)),
                Device(partial(self._add_halves, index))]

    def _inputs_of(self, index: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token's FFN input (1, n_embd) and predicted mask (1, n_ff) bool or None (every neuron)."""
        side, layer, c = self.side, self.side.layers[index], self.config
        if not self._predicting(layer):  # its own kernel, or the attention part's (`ffn_input`)
            return ffn_input(side, index, x, layer), None
        # fc2's kernel stages the mask and RMSNorm(x) (normed there, or handed over) side by side
        handed = handed_ffn_input(side, index)
        normed = self.cold.normed_staged
        mask = self.predict_one(layer, x, self.cold.mask_staged[None], (x if handed is None else handed, normed),
                                (layer.ffn_norm, c.rms_eps) if handed is None else None)
        return normed, mask

    def _hot_ffn(self, index: int, normed, mask, residual=None) -> torch.Tensor:
        """(n_embd,): the hot neurons' output (added to `residual` in place, and it, where given); the neurons that
        fired are summed into side.fired on the device (reading them here would wait for the GPU)."""
        side, layer = self.side, self.side.layers[index]
        return side.ops.hot_ffn(layer.gate, layer.up, layer.down_t, normed[0], None if mask is None else mask[0],
                                side.threshold, mask_index=layer.hot_index, fired=side.fired, residual=residual,
                                scale=self.config.residual_scale)[0]

    def _gpu_only(self, index: int, s) -> None:
        """A layer whose neurons are all on the GPU: without a post-FFN norm its output is added to x in the hot
        half's own kernels."""
        side, layer, c = self.side, self.side.layers[index], self.config
        started, x = side.clock.start(), s.on_device
        normed, mask = self._inputs_of(index, x)
        if layer.post_ffw_norm is None:
            self._hot_ffn(index, normed, mask, residual=x[0])
        else:
            s.on_device = side.norms.add(x, self._hot_ffn(index, normed, mask)[None], c.residual_scale,
                                         post_norm=layer.post_ffw_norm, eps=c.rms_eps)
        side.clock.stop("gpu", started)

    def _send_down(self, index: int, s) -> None:
        clock = self.side.clock
        started = clock.start()
        normed, mask = self._inputs[index] = self._inputs_of(index, s.on_device)
        clock.stop("gpu", started)
        started = clock.start()
        self.cold.send(normed, None if mask is None else mask[0])
        clock.stop("transfer", started)

    def _hot_half(self, index: int, s) -> None:
        started = self.side.clock.start()
        self._hot[index] = self._hot_ffn(index, *self._inputs[index])
        self.side.clock.stop("gpu", started)

    def _cold_half(self, index: int, s) -> None:
        """On CUDA the hot half runs meanwhile, queued before."""
        fired, seconds = self.cold.run(index, self._predicting(self.side.layers[index]))
        self.side.clock.add("cpu", seconds)
        self.side.stats.cpu_fired += fired

    def _add_halves(self, index: int, s) -> None:
        side, layer, c = self.side, self.side.layers[index], self.config
        started = side.clock.start()
        s.on_device = side.norms.add(s.on_device, self._hot[index][None], c.residual_scale, self.cold.upload(),
                                     layer.post_ffw_norm, c.rms_eps)
        side.clock.stop("gpu", started)

    def _several(self, index: int, layer: GPULayer, normed, mask, hot_mask, started) -> torch.Tensor:
        side = self.side
        hidden = side.ops.hidden_dense(layer.gate, layer.up, normed, hot_mask, side.threshold)  # (T, n_hot)
        hot = side.ops.down_t_product(layer.down_t, hidden)
        side.clock.stop("gpu", started)
        return hot + self.cold.several(index, normed, mask)

    def predict(self, layer: GPULayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, n_ff), (T, n_hot) bool: fc2 . ReLU(fc1 . x) >= threshold, x the residual stream before ffn_norm; at
        every neuron and at the hot ones (`gpu/predictor_*.py`)."""
        side = self.side
        scores = side.ops.matvec(layer.fc2, side.ops.matvec_relu(layer.fc1, x))
        return side.predictor_ops.masks(scores, layer.predictor_threshold, layer.hot_index)

    def predict_one(self, layer: GPULayer, x: torch.Tensor, out: torch.Tensor | None = None,
                    copy: tuple[torch.Tensor, torch.Tensor] | None = None,
                    copy_norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """One token: (1, n_ff) bool, `predict`'s mask at every neuron (into `out` if given), in two GEMVs whose
        epilogues apply the ReLU and the threshold (the S2 kernel reads it at the hot neurons through
        layer.hot_index); the second also copies copy[0] into copy[1], RMS-normed with copy_norm (weight, eps) if
        given."""
        ops = self.side.ops
        return ops.matvec_at_least(layer.fc2, ops.matvec_relu(layer.fc1, x), layer.predictor_threshold, out, copy,
                                   copy_norm)

    def every_neuron(self) -> SplitFFN:
        twin = copy.copy(self)
        twin.predicting = False
        twin._inputs, twin._hot = {}, {}
        return twin
