"""The sparse FFN part (`parts.py`'s protocol): only the neurons that fire. The modes differ in the candidate
neurons they choose:

  exact (no predictors)  every gate row, then up rows and down_t rows only where FATReLU passed: lossless
  predicted              the layer's predictor (fc2 . ReLU(fc1 . residual) >= threshold) picks candidates first;
                         gate, up and down_t rows are read only for them (a missed active neuron is lost)
  calibrated (CATS)      SiLU and GELU models with a sparsity file (`sparsity/`): every gate row, then up rows and
                         down_t rows only where |act(gate)| passes the layer's calibrated threshold (approximate);
                         CHESS: |act(gate)| times the neuron's calibrated scale

One token (decoding) is one numba call per layer (`cpu_layer.predict` + `cpu_layer.sparse_ffn_block`) over
preallocated buffers. Several tokens (a prompt, or several sequences' tokens decoded together) read each gate
and up row they need once for all of them: the gate of every neuron (exact) or of the union of the tokens'
predicted ones, the up rows of the union of those that fired; then each token's active rows of down_t (CATS,
CHESS: the file's row-major down projection over the masked act * up, each row once for all tokens). down_t is
made at load for quantized files by re-quantizing the transpose, one more rounding than the dense path, which
one-token decoding takes.
Predictor weights are packed as Q8_0 (F32 where a width is not a multiple of 32), so they cost about a quarter
of their float32 bytes per token.
"""

from __future__ import annotations

import numba
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

from ..kernels import cpu_layer, cpu_ops
from ..kernels.cpu_quant import activation_buffers, matmul, matmul_rows, prepare
from ..kernels.packed import BLOCK, PackedMatrix, pack
from ..model_file.config import ModelConfig
from ..model_file.tensor_shapes import FC1, FC2, block_name
from ..reference.sparse_ffn import (SparseFFNStats, checked_neuron_scales, require_silu_or_gelu,
                                     require_sparse_activation)
from ..kernels.block_args import NONE, BoundCall, FFNWeights, SparseFFNScratch
from .parts import CPUFFN
from .repack_cache import RepackCache
from .weights import PackedLayer, PackedWeights


def pack_predictor_weight(weight: np.ndarray, qtype: T = T.Q8_0) -> PackedMatrix:
    """A float32 predictor matrix (out, in) as Q8_0 when `in` is a multiple of 32 (else, or with qtype F32, F32)."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if qtype == T.F32 or weight.shape[1] % BLOCK:
        return pack((weight, T.F32, weight.shape))
    return pack((quants.quantize(weight, T.Q8_0), T.Q8_0, weight.shape))


class SparseFFN(CPUFFN):
    def __init__(self, config: ModelConfig, weights: PackedWeights, predictors=None, float_activations: bool = False,
                 observers: list | None = None, predictor_type: T = T.Q8_0, cache: RepackCache | None = None,
                 sparsity=None):
        """`cache`: where the packed predictors are kept between runs (`repack_cache.py`), for the file they came
        from. `sparsity`: a SiLU or GELU model's CATS thresholds (`sparsity.thresholds.SparsityThresholds`), instead of
        FATReLU's zeros."""
        super().__init__(config, weights, float_activations, [] if observers is None else observers)
        self.cats = sparsity is not None
        if self.cats:
            require_silu_or_gelu(config)
        else:
            require_sparse_activation(config)
        self.threshold = np.float32(config.activation_threshold)  # FATReLU's
        self.thresholds = [np.float32(t) for t in sparsity.thresholds[:, 0]] if self.cats else \
            [self.threshold] * config.n_layer  # each layer's, of the activation (FATReLU) or its magnitude (CATS)
        # CHESS: per layer (n_ff,) float32, the scale each neuron's |act| is multiplied by; CATS, FATReLU: NONE
        self.scales = [checked_neuron_scales(config, s) for s in sparsity.neuron_scales] \
            if self.cats and sparsity.neuron_scales is not None else [NONE] * config.n_layer
        # (n_ff, n_embd); formats: layer.ffn_codes; None for a layer whose whole FFN is on the GPU side (-ngl)
        self.down_t = [layer.ffn_down_t() if layer.ffn_gate is not None else None for layer in weights.layers]
        self.stats = SparseFFNStats()
        n_ff, n_embd = config.n_ff, config.n_embd
        self.scratch = SparseFFNScratch(*(np.empty(n_ff, np.float32) for _ in range(3)), np.empty(n_ff, np.int64),
                                        np.empty((1, n_embd), np.float32))  # this part's own (one token)
        self.candidates = np.empty(n_ff, np.int64)
        self._weights: dict[int, FFNWeights] = {}
        self._blocks: dict[int, BoundCall] = {}
        self.predictors = predictors
        if predictors is not None:
            self.fc1, self.fc2 = self._packed_predictors(predictors, predictor_type, cache)
            self.predictor_codes = [(a.code, b.code) for a, b in zip(self.fc1, self.fc2)]
            self.predictor_thresholds = [np.float32(t) for t in predictors.thresholds]
            self.residual = activation_buffers(1, n_embd)
            self.rank_buffers = {rank: activation_buffers(1, rank) for rank in set(predictors.ranks)}
            self.logits = np.empty((1, n_ff), np.float32)
            self._predict: dict[int, tuple] = {}  # per layer: the block and its weights' raw arrays

    PREDICTOR_CACHE_MODE = "predictors q8_0"  # the repack cache entry of a predictor file

    @staticmethod
    def holds_predictors(stored: dict, n_layer: int) -> bool:
        """Whether a repack cache entry holds every layer's packed fc1 and fc2."""
        return all(block_name(FC1, i) in stored and block_name(FC2, i) in stored for i in range(n_layer))

    @classmethod
    def _packed_predictors(cls, predictors, qtype: T, cache: RepackCache | None) -> tuple[list, list]:
        """fc1 (rank, n_embd) and fc2 (n_ff, rank) of every layer, packed (or mapped from the cache)."""
        names = [(block_name(FC1, i), block_name(FC2, i)) for i in range(predictors.n_layer)]
        stored = cache.load() if cache is not None and qtype == T.Q8_0 else {}
        if not cls.holds_predictors(stored, predictors.n_layer):
            stored = {}
            for (a, b), fc1, fc2 in zip(names, predictors.fc1, predictors.fc2):
                stored[a] = pack_predictor_weight(fc1.cpu().numpy(), qtype)
                stored[b] = pack_predictor_weight(fc2.cpu().numpy(), qtype)
            stored = cache.save(stored) if cache is not None and qtype == T.Q8_0 else stored
        return [stored[a] for a, _ in names], [stored[b] for _, b in names]

    @property
    def nbytes_predictors(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in zip(self.fc1, self.fc2)) if self.predictors is not None else 0

    def compute(self, index: int, s) -> None:
        """s.x (T, n_embd) += residual_scale * FFN(s.normed) over the active neurons."""
        if s.tokens > 1:
            self._several(index, self.weights.layers[index], s)
            return
        n_candidates = -1
        if self.predictors is not None:
            predict = self._predict.get(index)
            if predict is None:
                block = cpu_layer.predict(*self.predictor_codes[index], self.float_activations)
                fc1, fc2 = self.fc1[index], self.fc2[index]
                predict = self._predict[index] = (BoundCall(block), fc1.raw, fc2.raw, self.rank_buffers[fc1.rows])
            block, fc1, fc2, hidden = predict
            n_candidates = block(s.x, self.residual, fc1, fc2, self.predictor_thresholds[index], hidden, self.logits,
                                 self.candidates)
        block = self._blocks.get(index)
        if block is None:
            layer, c = self.weights.layers[index], self.config
            self._weights[index] = FFNWeights(layer.ffn_gate.raw, layer.ffn_up.raw, self.down_t[index].raw,
                                              self.thresholds[index], self.cats, np.float32(c.residual_scale),
                                              c.activation == "gelu", layer.post_ffw_norm, np.float32(c.rms_eps),
                                              self.scales[index])
            block = self._blocks[index] = BoundCall(
                cpu_layer.sparse_ffn_block(*layer.ffn_codes[:2], self.down_t[index].code, self.float_activations))
        fired = block(s.x, s.normed, self._weights[index], self.candidates, n_candidates, self.scratch,
                      numba.get_num_threads())
        self.stats.tokens += 1
        dense_gate = n_candidates < 0 or n_candidates > cpu_layer.dense_gate_above(self.config.n_ff)
        self.stats.rows += self.config.n_ff if dense_gate else n_candidates
        self.stats.active += fired
        self.stats.all_tokens += 1
        self.stats.all_active += fired

    def _several(self, index: int, layer: PackedLayer, b) -> None:  # b: the run state
        """T tokens (a prompt, or one token of each of several sequences decoded together): the gate rows of every
        neuron (exact) or of the union of the tokens' predicted ones, then the up rows of the union of those that
        fired, each row read once for all T; then each token's own active rows of down_t. CATS: every gate row,
        the activation, the up rows of the union of the neurons whose |act| (CHESS: times its scale) passes, then
        the down projection as the file stores it (row-major, not the re-quantized down_t) over act * up with the
        dropped neurons zeroed: a prompt's FFN has none of down_t's extra rounding, as TEAL's prompts have none."""
        fa, tokens, threshold = self.float_activations, b.x.shape[0], self.thresholds[index]
        if self.predictors is not None:
            predicted = self._predicted(index, b.x)  # (T, n_ff) bool
            rows = np.flatnonzero(predicted.any(axis=0))
            gate = np.empty((tokens, rows.shape[0]), np.float32)
            if rows.shape[0]:
                matmul_rows(layer.ffn_gate, b.normed, rows, gate, float_activations=fa)
            gate[~predicted[:, rows]] = -np.inf  # a token's neurons that were not predicted stay off
        else:
            matmul(layer.ffn_gate, b.normed, b.gate, float_activations=fa)
            if self.cats:  # CATS: the model's own activation, SiLU or GELU
                (cpu_ops.gelu if self.config.activation == "gelu" else cpu_ops.silu)(b.gate, b.gate)
            criterion = np.abs(b.gate) * self.scales[index] if self.scales[index].shape[0] else \
                np.abs(b.gate) if self.cats else b.gate
            passed = criterion >= threshold  # (T, n_ff)
            rows = np.flatnonzero(passed.any(axis=0))
            gate = np.ascontiguousarray(b.gate[:, rows])
        up = np.empty(gate.shape, np.float32)
        if rows.shape[0]:
            matmul_rows(layer.ffn_up, b.normed, rows, up, float_activations=fa)
        fired = np.empty(gate.shape, np.float32)
        if self.cats:  # CATS: act * up where |act| (CHESS: times the neuron's scale) passes
            np.multiply(gate, up, out=fired)
            fired[~passed[:, rows]] = 0.0
        else:
            cpu_ops.fatrelu_times(gate, up, threshold, fired)
        self.stats.all_tokens += tokens
        self.stats.all_active += int(np.count_nonzero(fired))
        hidden = b.hidden.x  # (T, n_ff)
        hidden[:] = 0.0
        hidden[:, rows] = fired
        if self.cats:  # the file's own down rows, each read once for all T (no re-quantized transpose)
            down = layer.ffn_down()
            matmul(down, prepare(hidden, code=down.code), b.block_out, float_activations=fa)
        else:
            down_t = self.down_t[index]
            cpu_layer.sparse_down(down_t.code, fa)(hidden, down_t.raw, self.scratch.active, self.scratch.hidden,
                                                   b.block_out, numba.get_num_threads())
        if layer.post_ffw_norm.shape[0]:
            cpu_ops.rms_norm(b.block_out, layer.post_ffw_norm, np.float32(self.config.rms_eps), b.block_out)
        cpu_ops.add_scaled(b.x, b.block_out, np.float32(self.config.residual_scale))

    def _predicted(self, index: int, x: np.ndarray) -> np.ndarray:
        """bool (T, n_ff): the neurons the predictor marks active for each token."""
        fc1, fc2 = self.fc1[index], self.fc2[index]
        hidden = np.empty((x.shape[0], fc1.rows), np.float32)
        matmul(fc1, prepare(x, code=fc1.code), hidden, float_activations=self.float_activations)
        logits = np.empty((x.shape[0], fc2.rows), np.float32)
        matmul(fc2, prepare(np.maximum(hidden, 0), code=fc2.code), logits, float_activations=self.float_activations)
        return logits >= self.predictor_thresholds[index]
