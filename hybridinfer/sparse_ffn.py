"""Sparse FFNs on the CPU: compute only the neurons that (are predicted to) fire.

Two modes, plugged into `Transformer.sparse_ffn`:
  ExactSparseFFN      lossless, no predictor: the gate for every neuron, then the up rows and down rows only
                      where FATReLU passed (the ProSparse operators S2 and S3).
  PredictedSparseFFN  a predictor picks each token's active neurons first; gate, up and down rows are read
                      only for those (approximate: a truly active neuron that was not predicted is lost).

One token at a time (decoding) runs the numba kernels of `kernels/cpu_sparse.py` over float32 rows, with the
down projection held transposed (`ffn_down_t`, row i = neuron i's output vector). Several tokens at once
(prompt prefill, perplexity) use the equivalent dense form, the reference twin: act(gate) * up * mask @ down.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import ModelConfig
from .errors import HybridInferError
from .kernels import cpu_sparse
from .model import ffn_activation
from .weights import LayerWeights, ModelWeights


class SparseFFNStats:
    """Neurons computed per token, summed over layers and tokens (for reports)."""

    def __init__(self):
        self.tokens = 0  # layer-token pairs run through the sparse kernels
        self.rows = 0  # neurons whose gate row was read
        self.active = 0  # neurons that passed the activation (their up and down rows were read)

    def reset(self) -> None:
        self.__init__()


def require_sparse_activation(config: ModelConfig) -> None:
    """Sparse FFN modes skip neurons whose activation is zero: only ReLU and FATReLU models have them."""
    if config.activation == "silu":
        raise HybridInferError("sparse FFN modes need a ReLU or FATReLU model; this model's FFN uses SiLU "
                               "(convert a ReLU/ProSparse model, or drop --exact/--predictors)")


class _CPUSparseFFN:
    def __init__(self, config: ModelConfig, weights: ModelWeights):
        require_sparse_activation(config)
        self.config = config
        self.threshold = np.float32(config.activation_threshold)
        # numpy views share the torch tensors' memory; only the transposed down projection is a new copy
        self.gate = [layer.ffn_gate.numpy() for layer in weights.layers]
        self.up = [layer.ffn_up.numpy() for layer in weights.layers]
        self.down_t = [np.ascontiguousarray(layer.ffn_down.numpy().T) for layer in weights.layers]
        self.all_rows = np.arange(config.n_ff, dtype=np.int64)
        self.stats = SparseFFNStats()

    def _one_token(self, index: int, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        out = np.empty(self.config.n_embd, dtype=np.float32)
        active = cpu_sparse.sparse_ffn(self.gate[index], self.up[index], self.down_t[index],
                                       np.ascontiguousarray(x.numpy()), rows, float(self.threshold), out)
        self.stats.tokens += 1
        self.stats.rows += rows.shape[0]
        self.stats.active += active
        return torch.from_numpy(out)

    def _dense_masked(self, layer: LayerWeights, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        hidden = ffn_activation(x @ layer.ffn_gate.T, self.config) * (x @ layer.ffn_up.T)  # (T, n_ff)
        if mask is not None:
            hidden = hidden * mask
        return hidden @ layer.ffn_down.T


class ExactSparseFFN(_CPUSparseFFN):
    """Lossless sparse FFN: every gate row, then up/down rows only for neurons whose activation passed."""

    def __call__(self, index: int, layer: LayerWeights, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return self._one_token(index, x[0], self.all_rows)[None]
        return self._dense_masked(layer, x, None)


class PredictedSparseFFN(_CPUSparseFFN):
    """Sparse FFN over the neurons a predictor marks active for each token."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, predictors):
        super().__init__(config, weights)
        self.predictors = predictors

    def __call__(self, index: int, layer: LayerWeights, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        predicted = self.predictors.active(index, residual)  # (T, n_ff) bool
        if x.shape[0] == 1:
            rows = np.flatnonzero(predicted[0].numpy()).astype(np.int64)
            return self._one_token(index, x[0], rows)[None]
        return self._dense_masked(layer, x, predicted.to(x.dtype))
