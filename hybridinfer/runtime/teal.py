"""TEAL over packed weights (`PackedTransformer.inputs` and `.ffn`): every projection's input with its small
entries zeroed, so that one token reads only the weight columns of the entries that remain.

One token (decoding) is two numba calls per layer (`kernels/teal_layer.py`) over the transposed projections
(`PackedLayer.teal_transposes`: the column-sparse products read only the rows of W_t whose input entry passes).
Several tokens (a prompt, several sequences), or a part made without transposes (calibration: `observing`),
zero the same entries and take the dense row-major products, each weight row read once for all tokens.
The four sites and their thresholds: `reference/sparse_inputs.py`, the torch twin.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numba
import numpy as np

from ..kernels import cpu_layer, cpu_ops
from ..kernels.cpu_quant import matmul
from ..kernels.teal_layer import teal_attention_block, teal_ffn_block
from ..model_file.config import ModelConfig
from ..reference.sparse_inputs import N_SITES, TEALStats
from ..reference.sparse_ffn import require_silu
from .weights import PackedLayer, PackedWeights


class PackedTEAL:
    """TEAL's part: the attention blocks (`attention`) and the FFN (called as `dense_ffn.py`'s parts are)."""

    predictors = None  # (the sparse modes' interface: none here)
    def __init__(self, config: ModelConfig, weights: PackedWeights, thresholds: np.ndarray,
                 float_activations: bool = False, transposed: bool = True):
        """thresholds (n_layer, 4): a TEAL sparsity file's. `transposed`: decode from the transposed weights
        (made now unless loaded with them); without, every batch takes the dense products (calibration)."""
        require_silu(config)
        self.config, self.float_activations = config, bool(float_activations)
        self.thresholds = np.ascontiguousarray(thresholds, np.float32)
        self.transposes = [layer.teal_transposes() for layer in weights.layers] if transposed else None
        self.stats = TEALStats(config)
        self.observers: list[Callable] = []  # observer(layer, site, values (T, n)) before zeroing
        c = config
        widest = max(c.n_embd, c.n_head * c.head_dim, c.n_ff)
        self.selected, self.coeffs = np.empty(widest, np.int64), np.empty(widest, np.float32)
        self.normed = np.empty((1, c.n_embd), np.float32)
        self.attended = np.empty((1, c.n_head * c.head_dim), np.float32)
        self.gate_up, self.hidden = np.empty(2 * c.n_ff, np.float32), np.empty(c.n_ff, np.float32)

    @classmethod
    @contextmanager
    def observing(cls, transformer, observe: Callable, thresholds: np.ndarray | None = None) -> Iterator[None]:
        """`transformer` with observe(layer, site, values) called at every site before its zeroing, for the
        duration: sparsified with `thresholds` (n_layer, 4), or dense (none; calibration; the reference twin:
        `CalibratedSparseInputs.observing`)."""
        if thresholds is None:
            thresholds = np.zeros((transformer.config.n_layer, N_SITES), np.float32)
        part = cls(transformer.config, transformer.weights, thresholds, transformer.float_activations,
                   transposed=False)
        part.observers.append(observe)
        ffn, inputs = transformer.ffn, transformer.inputs
        transformer.ffn = transformer.inputs = part
        try:
            yield
        finally:
            transformer.ffn, transformer.inputs = ffn, inputs

    def attention(self, transformer, index: int, layer: PackedLayer, b) -> None:
        """b.x (T, n_embd) += residual_scale * attention, with the inputs of Q/K/V and of the output projection
        zeroed below their thresholds."""
        c, t = self.config, self.thresholds[index]
        n = b.x.shape[0]
        q, k, v = (b.q.reshape(n, c.n_head, c.head_dim), b.k.reshape(n, c.n_head_kv, c.head_dim),
                   b.v.reshape(n, c.n_head_kv, c.head_dim))
        caches = transformer.rope_cos, transformer.rope_sin, b.positions, b.sequences, \
            transformer.k_caches[index], transformer.v_caches[index], b.scores
        scale = np.float32(c.residual_scale)
        if n == 1 and self.transposes is not None and not self.observers:
            qkv_t, output_t = self.transposes[index][:2]
            block = teal_attention_block(qkv_t.code, output_t.code, self.float_activations)
            read_in, read_out = block(b.x, layer.attn_norm, c.rms_eps, qkv_t.raw, output_t.raw, t[0], t[1],
                                      self.normed, self.selected, self.coeffs, b.qkv, q, k, v, *caches,
                                      self.attended, b.block_out, scale, numba.get_num_threads())
            self.stats.count(0, c.n_embd, c.n_embd - read_in)
            self.stats.count(1, self.attended.shape[1], self.attended.shape[1] - read_out)
            return
        cpu_ops.rms_norm(b.x, layer.attn_norm, c.rms_eps, b.normed.x)
        self._zero(index, 0, b.normed)  # (which makes its int8 blocks)
        matmul(layer.attn_qkv, b.normed, b.qkv, float_activations=self.float_activations)
        cpu_layer.attend(b.qkv, q, k, v, *caches, b.attended.x)
        self._zero(index, 1, b.attended)
        matmul(layer.attn_output, b.attended, b.block_out, float_activations=self.float_activations)
        cpu_ops.add_scaled(b.x, b.block_out, scale)

    def __call__(self, index: int, layer: PackedLayer, b) -> None:
        """b.x (T, n_embd) += residual_scale * FFN(b.normed), with the inputs of gate/up and of down zeroed below
        their thresholds (`dense_ffn.py`'s protocol)."""
        c, t = self.config, self.thresholds[index]
        scale = np.float32(c.residual_scale)
        if b.x.shape[0] == 1 and self.transposes is not None and not self.observers:
            gate_up_t, down_t = self.transposes[index][2:]
            block = teal_ffn_block(gate_up_t.code, down_t.code, self.float_activations)
            read_in, read_down = block(b.x, b.normed.x, gate_up_t.raw, down_t.raw, t[2], t[3], self.selected,
                                       self.coeffs, self.gate_up, self.hidden, b.block_out, scale,
                                       numba.get_num_threads())
            self.stats.count(2, c.n_embd, c.n_embd - read_in)
            self.stats.count(3, c.n_ff, c.n_ff - read_down)
            return
        self._zero(index, 2, b.normed)
        matmul(layer.ffn_gate, b.normed, b.gate, float_activations=self.float_activations)
        matmul(layer.ffn_up, b.normed, b.up, float_activations=self.float_activations)
        cpu_ops.silu_times(b.gate, b.up, b.hidden.x)
        self._zero(index, 3, b.hidden)
        matmul(layer.ffn_down(), b.hidden, b.block_out, float_activations=self.float_activations)
        cpu_ops.add_scaled(b.x, b.block_out, scale)

    def _zero(self, index: int, site: int, act) -> None:
        """act.x (T, n): its entries below the (layer, site) threshold zeroed, its int8 blocks made again."""
        for observe in self.observers:
            observe(index, site, act.x)
        zeroed = cpu_ops.zero_below(act.x, self.thresholds[index, site])
        self.stats.count(site, act.x.size, zeroed)
        cpu_layer.prepare(act)
