"""Sparse FFNs of the reference backend (the oracle): what the fast sparse paths must compute.

Two modes, plugged into `Transformer.sparse_ffn`:
  ExactSparseFFN      lossless, no predictor: act(gate) * up @ down with the neurons whose activation is zero
                      contributing nothing (equal to the dense FFN: ReLU/FATReLU zeros are exact zeros).
  PredictedSparseFFN  a predictor picks each token's active neurons first; the others are dropped (approximate:
                      a truly active neuron that was not predicted is lost).

Both are the plain masked dense form, act(gate) * up * mask @ down, in torch float32 for every batch size. The
fast twins are `runtime/sparse_ffn.py` (CPU) and the hybrid runtime's split FFN (`hybrid/`).
"""

from __future__ import annotations

import torch

from ..model_file.config import ModelConfig
from ..errors import HybridInferError
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


def require_sparse_activation(config: ModelConfig, what: str = "sparse FFN modes (--exact/--predictors)") -> None:
    """Sparse FFN modes skip neurons whose activation is zero: only ReLU and FATReLU models have them."""
    if config.activation == "silu":
        raise HybridInferError(f"{what} need a ReLU or FATReLU model; this model's FFN uses SiLU "
                               "(convert a ReLU/ProSparse model, drop the sparse options, or offload whole layers "
                               "with -ngl)")


class _MaskedFFN:
    def __init__(self, config: ModelConfig, weights: ModelWeights):
        require_sparse_activation(config)
        self.config = config
        self.stats = SparseFFNStats()

    def _masked(self, layer: LayerWeights, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (T, n_embd) -> (T, n_embd); mask (T, n_ff) bool, None = every neuron a candidate."""
        activation = ffn_activation(x @ layer.ffn_gate.T, self.config)  # (T, n_ff)
        if mask is not None:
            activation = activation * mask
        if x.shape[0] == 1:
            self.stats.tokens += 1
            self.stats.rows += int(mask.sum()) if mask is not None else self.config.n_ff
            self.stats.active += int((activation != 0).sum())
        return (activation * (x @ layer.ffn_up.T)) @ layer.ffn_down.T


class ExactSparseFFN(_MaskedFFN):
    """Lossless sparse FFN: neurons whose activation is zero contribute nothing."""

    def __call__(self, index: int, layer: LayerWeights, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._masked(layer, x, None)


class PredictedSparseFFN(_MaskedFFN):
    """Sparse FFN over the neurons a predictor marks active for each token."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, predictors):
        super().__init__(config, weights)
        self.predictors = predictors

    def __call__(self, index: int, layer: LayerWeights, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._masked(layer, x, self.predictors.active(index, residual).to(x.dtype))
