"""The GPU side's parts (`runtime/parts.py`'s protocol, over s.on_device, the residual stream (T, n_embd) float32
on the device): attention with its KV cache, the dense FFN of -ngl, the boundary where the residual stream changes
device, the output; and `TimedOnCPU`, which times a CPU part of a hybrid run on the run's clock. The split FFN is
`split_ffn.py`. Each part times itself on the GPU side's clock (`report.Clock`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..finite_check import require_finite
from ..reference.model import apply_rope, rms_norm
from .gpu_side import GPULayer, GPUSide


class GPUAttention:
    """x += residual_scale * attention(RMSNorm(x)) over the layer's KV cache on the device."""

    def __init__(self, side: GPUSide):
        self.side, self.config = side, side.config

    def __call__(self, index: int, s) -> None:
        side, layer = self.side, self.side.layers[index]
        started = side.clock.start()
        x = s.on_device
        h = rms_norm(x, layer.attn_norm, self.config.rms_eps)
        s.on_device = x + self.attention(layer, h, s.start_pos) * self.config.residual_scale
        side.clock.stop("gpu", started)

    def attention(self, layer: GPULayer, h: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Causal attention of T new positions over the layer's KV cache; h = RMSNorm(x) (T, n_embd)."""
        c, side = self.config, self.side
        n, end = h.shape[0], start_pos + h.shape[0]
        q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        qkv = side.ops.matvec(layer.qkv, h)  # (T, q_rows + 2 kv_rows)
        cos, sin = side.rope_cos[start_pos:end], side.rope_sin[start_pos:end]
        q = apply_rope(qkv[:, :q_rows].reshape(n, c.n_head, c.head_dim), cos, sin)
        k = apply_rope(qkv[:, q_rows:q_rows + kv_rows].reshape(n, c.n_head_kv, c.head_dim), cos, sin)
        layer.k_cache[start_pos:end] = k.to(side.kv_dtype)
        layer.v_cache[start_pos:end] = qkv[:, q_rows + kv_rows:].reshape(n, c.n_head_kv, c.head_dim).to(side.kv_dtype)
        group = c.n_head // c.n_head_kv
        keys = layer.k_cache[:end].float().repeat_interleave(group, dim=1).transpose(0, 1)  # (n_head, end, hd)
        values = layer.v_cache[:end].float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (q.transpose(0, 1) @ keys.transpose(1, 2)) / math.sqrt(c.head_dim)  # (n_head, T, end)
        if n > 1:
            positions = torch.arange(end, device=h.device)
            future = positions[None, :] > positions[start_pos:end, None]
            scores = scores.masked_fill(future, float("-inf"))
        attended = (scores.softmax(-1) @ values).transpose(0, 1).reshape(n, q_rows)
        return side.ops.matvec(layer.wo, attended)

    def every_neuron(self) -> GPUAttention:
        return self


class GPUDenseFFN:
    """x += residual_scale * down(act(gate(RMSNorm(x))) * up(RMSNorm(x))), every neuron on the device (-ngl)."""

    def __init__(self, side: GPUSide):
        self.side, self.config = side, side.config

    def __call__(self, index: int, s) -> None:
        side, layer, c = self.side, self.side.layers[index], self.config
        started = side.clock.start()
        x = s.on_device
        normed = rms_norm(x, layer.ffn_norm, c.rms_eps)
        gate, up = side.ops.matvec(layer.gate, normed), side.ops.matvec(layer.up, normed)
        if c.activation == "silu":
            hidden = torch.nn.functional.silu(gate) * up
        else:
            hidden = torch.where(gate >= side.threshold, gate, torch.zeros_like(gate)) * up
        s.on_device = x + side.ops.matvec(layer.down, hidden) * c.residual_scale
        side.clock.stop("gpu", started)

    def every_neuron(self) -> GPUDenseFFN:
        return self


class ToDevice:
    """The boundary before a GPU layer that follows the embedding or a CPU layer: s.x goes up to s.on_device."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, index: int, s) -> None:
        s.on_device = self.side.upload_stream(s.x)

    def every_neuron(self) -> ToDevice:
        return self


class ToHost:
    """The boundary after a GPU layer that a CPU layer (or the CPU's output projection) follows."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, index: int, s) -> None:
        self.side.download_stream(s.on_device, s.x)
        s.on_device = None
        require_finite(s.x, f"the GPU side's layers before layer {index + 1}", s.start_pos)

    def every_neuron(self) -> ToHost:
        return self


class GPUOutput:
    """The output part on the device: (n_logits, n_vocab) float32 on the CPU."""

    def __init__(self, side: GPUSide):
        self.side = side

    def __call__(self, s) -> np.ndarray:
        return self.side.logits(s.on_device[s.tokens - s.logits.shape[0]:])


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

    def every_neuron(self) -> TimedOnCPU:
        return TimedOnCPU(self.part.every_neuron(), self.side)
