"""TEAL (and WINA, its weight-aware criterion) over packed weights, as two parts (`parts.py`'s protocol),
`TEALAttention` and `TEALFFN`, over one shared `TEALSites`: every projection's input with its small entries zeroed,
so that one token reads only the weight columns of the entries that remain.

One token (decoding) is two numba calls per layer (`kernels/teal_layer.py`) over the transposed projections
(`PackedLayer.teal_transposes`: the column-sparse products read only the rows of W_t whose input entry passes).
Several tokens (a prompt, several sequences), or parts made without transposes (calibration: `observing`),
zero the same entries and take the dense row-major products, each weight row read once for all tokens.
The four sites and their thresholds: `reference/sparse_inputs.py`, the torch twin.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numba
import numpy as np

from ..kernels import cpu_layer, cpu_ops
from ..kernels.block_args import (AttentionScratch, AttentionWeights, BoundCall, Selection, SiteScales,
                                  TEALFFNScratch, TEALFFNWeights)
from ..kernels.cpu_quant import matmul
from ..kernels.teal_layer import teal_attention_block, teal_ffn_block
from ..model_file.config import ModelConfig
from ..reference.sparse_inputs import N_SITES, TEALStats, checked_column_norms
from ..reference.sparse_ffn import require_silu_or_gelu
from .parts import CPUAttention, CPUFFN, attention_weights
from .weights import PackedWeights


class TEALSites:
    """What TEAL's two parts share: each layer's thresholds (n_layer, 4) and per-column weights (`SiteScales`:
    WINA's column norms, empty for TEAL), the transposed weights, the counts per site (`stats`), the observers of
    the sites, and the one-token scratch."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, thresholds: np.ndarray, transposed: bool = True,
                 column_norms=None, method: str = "teal"):
        """thresholds (n_layer, 4): a TEAL or WINA sparsity file's; column_norms: WINA's (per layer, per site), None
        for TEAL. `transposed`: decode from the transposed weights (made now unless loaded with them); without,
        every batch takes the dense products (calibration)."""
        require_silu_or_gelu(config)
        self.config = config
        # per layer, the format code of the matrices each site's input feeds: Q/K/V, output, gate/up, down
        self.site_codes = [(*layer.attention_codes, layer.ffn_codes[0], layer.ffn_codes[2]) for layer in weights.layers]
        self.thresholds = np.ascontiguousarray(thresholds, np.float32)
        self.layer_thresholds = list(self.thresholds)  # each layer's (N_SITES,) row, one array object per layer
        self.transposes = [layer.teal_transposes() for layer in weights.layers] if transposed else None
        self.scales = [SiteScales(*norms) for norms in checked_column_norms(config, column_norms)] \
            if column_norms is not None else [SiteScales()] * config.n_layer
        self.stats = TEALStats(config, method)
        self.observers: list[Callable] = []  # observer(layer, site, values (T, n)) before zeroing
        c = config
        widest = max(c.n_embd, c.n_head * c.head_dim, c.n_ff)
        self.selection = Selection(np.empty(widest, np.int64), np.empty(widest, np.float32))
        self.normed = np.empty((1, c.n_embd), np.float32)
        self.attended = np.empty((1, c.n_head * c.head_dim), np.float32)
        self.ffn_scratch = TEALFFNScratch(np.empty(2 * c.n_ff, np.float32), np.empty(c.n_ff, np.float32),
                                          np.empty((1, c.n_embd), np.float32))

    @property
    def column_sparse(self) -> bool:
        """One token reads the transposed weights' rows (not while observing)."""
        return self.transposes is not None and not self.observers

    def zero(self, index: int, site: int, act) -> None:
        """act.x (T, n): its entries below the (layer, site) threshold zeroed (WINA: |x_i| * column norm below it),
        its int8 blocks made again."""
        for observe in self.observers:
            observe(index, site, act.x)
        zeroed = cpu_ops.zero_below(act.x, self.thresholds[index, site], self.scales[index][site])
        self.stats.count(site, act.x.size, zeroed)
        cpu_layer.prepare(act, self.site_codes[index][site])


class TEALAttention:
    """s.x (T, n_embd) += residual_scale * attention, with the inputs of Q/K/V and of the output projection
    zeroed below their thresholds."""

    def __init__(self, sites: TEALSites, weights: PackedWeights, float_activations: bool = False):
        self.sites, self.weights, self.float_activations = sites, weights, bool(float_activations)
        self.config = sites.config
        self._weights: dict[int, AttentionWeights] = {}
        self._blocks: dict[int, BoundCall] = {}
        self._scratch: AttentionScratch | None = None  # over the last one-token run state's q, k, v
        self._dense_weights: dict[int, AttentionWeights] = {}

    def __call__(self, index: int, s) -> None:
        c, sites = self.config, self.sites
        if s.tokens == 1 and sites.column_sparse:
            block = self._blocks.get(index)
            if block is None:
                qkv_t, output_t = sites.transposes[index][:2]
                layer = self.weights.layers[index]
                self._weights[index] = attention_weights(c, layer, qkv_t, output_t)
                block = self._blocks[index] = BoundCall(
                    teal_attention_block(qkv_t.code, output_t.code, self.float_activations))
            scratch = self._scratch
            if scratch is None or scratch.qkv is not s.qkv:
                scratch = self._scratch = AttentionScratch(sites.normed, s.qkv, s.q, s.k, s.v, sites.attended,
                                                           s.block_out)
            read_in, read_out = block(s.x, self._weights[index], sites.layer_thresholds[index], sites.scales[index],
                                      s.kv[index], scratch, sites.selection, numba.get_num_threads())
            sites.stats.count(0, c.n_embd, c.n_embd - read_in)
            sites.stats.count(1, sites.attended.shape[1], sites.attended.shape[1] - read_out)
            return
        layer = self.weights.layers[index]
        cpu_ops.rms_norm(s.x, layer.attn_norm, c.rms_eps, s.normed.x)
        sites.zero(index, 0, s.normed)  # (which makes its int8 blocks)
        matmul(layer.attn_qkv, s.normed, s.qkv, float_activations=self.float_activations)
        cpu_layer.attend(s.qkv, s.q, s.k, s.v, s.kv[index], self._weights_of(index), s.attended.x)
        sites.zero(index, 1, s.attended)
        matmul(layer.attn_output, s.attended, s.block_out, float_activations=self.float_activations)
        if layer.post_attention_norm.shape[0]:
            cpu_ops.rms_norm(s.block_out, layer.post_attention_norm, np.float32(c.rms_eps), s.block_out)
        cpu_ops.add_scaled(s.x, s.block_out, np.float32(c.residual_scale))

    def _weights_of(self, index: int) -> AttentionWeights:
        """The row-major weights' argument group (what `attend` reads of it: the biases and head norms)."""
        found = self._dense_weights.get(index)
        if found is None:
            layer = self.weights.layers[index]
            found = self._dense_weights[index] = attention_weights(self.config, layer, layer.attn_qkv,
                                                                   layer.attn_output)
        return found

    def every_neuron(self) -> CPUAttention:
        return CPUAttention(self.config, self.weights, self.float_activations)


class TEALFFN(CPUFFN):
    """s.x (T, n_embd) += residual_scale * FFN(s.normed), with the inputs of gate/up and of down zeroed below
    their thresholds."""

    def __init__(self, sites: TEALSites, weights: PackedWeights, float_activations: bool = False,
                 observers: list | None = None):
        super().__init__(sites.config, weights, float_activations, [] if observers is None else observers)
        self.sites, self.stats = sites, sites.stats
        self._weights: dict[int, TEALFFNWeights] = {}
        self._blocks: dict[int, BoundCall] = {}

    def compute(self, index: int, s) -> None:
        c, sites = self.config, self.sites
        scale = np.float32(c.residual_scale)
        if s.tokens == 1 and sites.column_sparse:
            block = self._blocks.get(index)
            if block is None:
                gate_up_t, down_t = sites.transposes[index][2:]
                layer = self.weights.layers[index]
                self._weights[index] = TEALFFNWeights(gate_up_t.raw, down_t.raw, scale, c.activation == "gelu",
                                                      layer.post_ffw_norm, np.float32(c.rms_eps))
                block = self._blocks[index] = BoundCall(
                    teal_ffn_block(gate_up_t.code, down_t.code, self.float_activations))
            read_in, read_down = block(s.x, s.normed.x, self._weights[index], sites.layer_thresholds[index],
                                       sites.scales[index], sites.selection, sites.ffn_scratch,
                                       numba.get_num_threads())
            sites.stats.count(2, c.n_embd, c.n_embd - read_in)
            sites.stats.count(3, c.n_ff, c.n_ff - read_down)
            return
        layer = self.weights.layers[index]
        sites.zero(index, 2, s.normed)
        matmul(layer.ffn_gate, s.normed, s.gate, float_activations=self.float_activations)
        matmul(layer.ffn_up, s.normed, s.up, float_activations=self.float_activations)
        (cpu_ops.gelu_times if c.activation == "gelu" else cpu_ops.silu_times)(s.gate, s.up, s.hidden.x)
        sites.zero(index, 3, s.hidden)
        matmul(layer.ffn_down(), s.hidden, s.block_out, float_activations=self.float_activations)
        if layer.post_ffw_norm.shape[0]:
            cpu_ops.rms_norm(s.block_out, layer.post_ffw_norm, np.float32(c.rms_eps), s.block_out)
        cpu_ops.add_scaled(s.x, s.block_out, scale)


def teal_parts(config: ModelConfig, weights: PackedWeights, thresholds: np.ndarray, float_activations: bool,
               observers: list, transposed: bool = True, column_norms=None, method: str = "teal"
               ) -> tuple[TEALAttention, TEALFFN]:
    """TEAL's (or with `column_norms` WINA's) attention and FFN parts over one `TEALSites`."""
    sites = TEALSites(config, weights, thresholds, transposed, column_norms, method)
    return TEALAttention(sites, weights, float_activations), TEALFFN(sites, weights, float_activations, observers)


@contextmanager
def observing(decoder, observe: Callable, thresholds: np.ndarray | None = None,
              column_norms=None) -> Iterator[None]:
    """`decoder` (`decoder.Decoder`) with observe(layer, site, values) called at every site before its zeroing,
    for the duration: sparsified with `thresholds` (n_layer, 4) (and WINA's `column_norms`), or dense (none;
    calibration; the reference twin: `CalibratedSparseInputs.observing`)."""
    if thresholds is None:
        thresholds = np.zeros((decoder.config.n_layer, N_SITES), np.float32)
    attention, ffn = teal_parts(decoder.config, decoder.weights, thresholds, decoder.float_activations,
                                decoder.observers, transposed=False, column_norms=column_norms)
    attention.sites.observers.append(observe)
    with decoder.replaced([(attention, ffn)] * decoder.config.n_layer):
        yield
