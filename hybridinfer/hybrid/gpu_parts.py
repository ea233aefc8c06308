"""The GPU side's parts (`runtime/parts.py`'s protocol, over s.on_device, the residual stream (T, n_embd) float32
on the device): attention with its KV cache, the dense FFN of -ngl, the boundary where the residual stream changes
device, the output; and `TimedOnCPU`, which times a CPU part of a hybrid run on the run's clock. The split FFN is
`split_ffn.py`. Each part times itself on the GPU side's clock (`report.Clock`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..finite_check import require_finite
from .decode_graphs import Device, Host, run_steps
from .gpu_side import GPULayer, GPUSide


class GPUAttention:
    """x += residual_scale * wo . attention(RMSNorm(x)) over the layer's KV cache on the device (x in place). One
    token in 4 kernels: the norm in the Q/K/V GEMV's prologue, the attention's two, the residual add in the output
    GEMV's epilogue; the layer's FFN part norms x itself. Where the model has a post-attention norm (gemma3) the
    output is RMS-normed before the add, in the add's own kernel (one launch more), which also computes the FFN's
    RMSNorm of x and hands it to the layer's FFN part (`side.ffn_input`)."""

    def __init__(self, side: GPUSide):
        self.side, self.config = side, side.config

    def __call__(self, index: int, s) -> None:
        side, layer, c = self.side, self.side.layers[index], self.config
        started = side.clock.start()
        x = s.on_device
        attended = self.attention(index, layer, x, s.start_pos)  # (T, q_rows)
        if layer.post_attention_norm is None:
            s.on_device = side.ops.add_matvec(x, layer.wo, attended, c.residual_scale)
        else:
            x, normed = side.norms.add_rms_norm(x, side.ops.matvec(layer.wo, attended), c.residual_scale,
                                                layer.ffn_norm, c.rms_eps, layer.post_attention_norm)
            s.on_device, side.ffn_input = x, (index, normed)
        side.clock.stop("gpu", started)

    def attention(self, index: int, layer: GPULayer, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Causal attention of T new positions over the layer's KV cache, read in place (`gpu/attention_*.py`), with
        the layer's biases, head norms, query scale and window (`layer.heads`), of RMSNorm(x) (x (T, n_embd): the
        residual stream). One token: the side's device position is read, and advanced by the token's last GPU
        layer (`GPUSide.at_position`)."""
        side = self.side
        qkv = side.ops.norm_matvec(layer.qkv, x, layer.attn_norm, self.config.rms_eps)  # (T, q_rows + 2 kv_rows)
        one = x.shape[0] == 1
        advance = one and index == side.last_layer
        attended = side.attention_ops.decode_attention(qkv, layer.k_cache, layer.v_cache, layer.rope_cos,
                                                       layer.rope_sin, start_pos, self.config.n_head,
                                                       side.at_position(start_pos) if one else None,
                                                       side.attention_scratch, layer.heads, advance)
        if advance:
            side.advanced(start_pos)
        return attended

    def decode_steps(self, index: int) -> list:
        return [Device(lambda s: self(index, s))]

    def every_neuron(self) -> GPUAttention:
        return self


class GPUDenseFFN:
    """x += residual_scale * down(act(gate(RMSNorm(x))) * up(RMSNorm(x))), every neuron on the device (-ngl); act
    SiLU, GELU (tanh approximation) or FATReLU. One token in two kernels (`gate_up` with the norm in its prologue,
    then the down GEMV with the residual add as its epilogue); where the model has a post-FFN norm (gemma3) the
    down projection's output is RMS-normed before the add, in the add's own kernel (one launch more)."""

    def __init__(self, side: GPUSide):
        self.side, self.config = side, side.config

    def __call__(self, index: int, s) -> None:
        side, layer, c = self.side, self.side.layers[index], self.config
        started = side.clock.start()
        x = s.on_device
        normed = handed_ffn_input(side, index)
        if normed is None:  # the FFN's norm in gate_up's prologue
            norm = (layer.ffn_norm, c.rms_eps)
            hidden = side.ops.gate_up(layer.gate, layer.up, x, c.activation, side.threshold, norm)
        else:
            hidden = side.ops.gate_up(layer.gate, layer.up, normed, c.activation, side.threshold)
        if layer.post_ffw_norm is None:
            s.on_device = side.ops.add_matvec(x, layer.down, hidden, c.residual_scale)  # the add in its epilogue
        else:
            s.on_device = side.norms.add(x, side.ops.matvec(layer.down, hidden), c.residual_scale,
                                         post_norm=layer.post_ffw_norm, eps=c.rms_eps)
        side.clock.stop("gpu", started)

    def decode_steps(self, index: int) -> list:
        return [Device(lambda s: self(index, s))]

    def every_neuron(self) -> GPUDenseFFN:
        return self


def handed_ffn_input(side: GPUSide, index: int) -> torch.Tensor | None:
    """RMSNorm(x) with the FFN's weight where the layer's attention part computed it (a model with post-norms),
    else None: the FFN part norms x in its first kernel."""
    handed, side.ffn_input = side.ffn_input, None
    return handed[1] if handed is not None and handed[0] == index else None


def ffn_input(side: GPUSide, index: int, x: torch.Tensor, layer: GPULayer) -> torch.Tensor:
    """RMSNorm(x) with the FFN's weight: the one the layer's attention part handed over, else computed."""
    handed = handed_ffn_input(side, index)
    return handed if handed is not None else side.norms.rms_norm(x, layer.ffn_norm, side.config.rms_eps)


class ToDevice:
    """The boundary before a GPU layer that follows the embedding or a CPU layer: s.x goes up to s.on_device (one
    token: through the side's fixed buffers)."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, index: int, s) -> None:
        if s.tokens == 1:
            run_steps(self.decode_steps(index), s)
        else:
            s.on_device = self.side.upload_stream(s.x)

    def decode_steps(self, index: int) -> list:
        side = self.side

        def stage(s) -> None:
            side.stream_host.numpy()[:] = s.x

        def upload(s) -> None:
            started = side.clock.start()
            s.on_device = side.stream_device.copy_(side.stream_host, non_blocking=True)
            side.clock.stop("transfer", started)

        return [Host(stage), Device(upload)]

    def every_neuron(self) -> ToDevice:
        return self


class ToHost:
    """The boundary after a GPU layer that a CPU layer (or the CPU's output projection) follows."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, index: int, s) -> None:
        if s.tokens == 1:
            run_steps(self.decode_steps(index), s)
            return
        self.side.download_stream(s.on_device, s.x)
        s.on_device = None
        require_finite(s.x, f"the GPU side's layers before layer {index + 1}", s.start_pos)

    def decode_steps(self, index: int) -> list:
        side = self.side

        def download(s) -> None:
            started = side.clock.start()
            side.stream_host.copy_(s.on_device, non_blocking=True)
            side.clock.stop("transfer", started)

        def receive(s) -> None:
            side.wait()
            s.x[:] = side.stream_host.numpy()
            s.on_device = None
            require_finite(s.x, f"the GPU side's layers before layer {index + 1}", s.start_pos)

        return [Device(download), Host(receive)]

    def every_neuron(self) -> ToHost:
        return self


class GPUOutput:
    """The output part on the device: (n_logits, n_vocab) float32 on the CPU."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, s) -> np.ndarray:
        if s.tokens == 1:
            return run_steps(self.decode_steps(), s)
        return self.side.logits(s.on_device[s.tokens - s.logits.shape[0]:])

    def decode_steps(self) -> list:
        side = self.side

        def project(s) -> None:
            started = side.clock.start()
            side.logits_host.copy_(side.logits_on_device(s.on_device), non_blocking=True)
            side.clock.stop("gpu", started)

        def receive(s) -> np.ndarray:
            side.wait()
            return side.logits_host.numpy().copy()

        return [Device(project), Host(receive)]


class TimedOnCPU:
    """A CPU part (or the CPU's output part) of a hybrid run, its decoding time added to the CPU side's."""

    def __init__(self, part, side: GPUSide):
        self.part, self.side = part, side

    def __call__(self, *args):
        start = time.perf_counter()
        result = self.part(*args)
        if args[-1].tokens == 1:
            self.side.clock.add("cpu", time.perf_counter() - start)
        return result

    def decode_steps(self, *index: int) -> list:
        """One host step (a layer's part: decode_steps(index); the output part: decode_steps())."""
        return [Host(lambda s: self(*index, s))]

    def every_neuron(self) -> TimedOnCPU:
        return TimedOnCPU(self.part.every_neuron(), self.side)
