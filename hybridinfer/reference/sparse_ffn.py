"""Sparse FFN modes of the reference backend (the oracle): what the fast sparse paths must compute.

Three modes, set as `Transformer.sparse`; each masks a layer's FFN activation act(gate) (T, n_ff), and the
Transformer computes the one masked dense form, act(gate) * mask * up @ down, in torch float32 for every batch size:
  ExactSparseFFN      no mask: neurons whose activation is zero contribute nothing (lossless: ReLU/FATReLU zeros
                      are exact zeros, so this equals the dense FFN; it counts what a sparse kernel would read)
  PredictedSparseFFN  a predictor picks each token's active neurons first; the others are dropped (approximate:
                      a truly active neuron that was not predicted is lost)
  CalibratedSparseFFN SiLU and GELU models (CATS): activations whose magnitude is below the layer's calibrated threshold
                      (`sparsity/`) are zeroed (approximate)
The fast twins are `runtime/sparse_ffn.py` (CPU) and the hybrid runtime's split FFN (`hybrid/`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..model_file.config import ModelConfig
from ..errors import HybridInferError


class SparseFFNStats:
    """Neurons computed per token, summed over layers and tokens (for reports)."""

    label = "FFN sparsity", "of activations zero"  # what `sparsity` measures, for reports

    def __init__(self):
        self.tokens = 0  # layer-token pairs run through the sparse kernels
        self.rows = 0  # neurons whose gate row was read
        self.active = 0  # neurons that passed the activation (their up and down rows were read)
        self.all_tokens = 0  # layer-token pairs of every batch size (prompts too), for `sparsity`
        self.all_active = 0  # their neurons that passed the activation

    def reset(self) -> None:
        self.__init__()

    def sparsity(self, n_ff: int) -> float | None:
        """The share of FFN activations that were zero, over every token so far (None before any)."""
        return 1.0 - self.all_active / (self.all_tokens * n_ff) if self.all_tokens else None


ACTIVATION_NAMES = {"silu": "SiLU", "gelu": "GELU", "relu": "ReLU", "fatrelu": "FATReLU"}  # as users write them


def require_sparse_activation(config: ModelConfig, what: str = "sparse FFN modes (--exact/--predictors)") -> None:
    """Sparse FFN modes skip neurons whose activation is zero: only ReLU and FATReLU models have them."""
    if config.activation in ("silu", "gelu"):
        raise HybridInferError(f"{what} need a ReLU or FATReLU model; this model's FFN uses "
                               f"{ACTIVATION_NAMES[config.activation]} "
                               "(calibrate thresholds with `hybridinfer sparsify` and pass --sparsity-file, convert "
                               "a ReLU/ProSparse model, drop the sparse options, or offload whole layers with -ngl)")
    if config.activation not in ("relu", "fatrelu"):
        raise HybridInferError(f"{what} need a ReLU or FATReLU model; this model's FFN uses "
                               f"{ACTIVATION_NAMES.get(config.activation, config.activation)}, which has no zeros to skip: drop the sparse options")


def require_silu_or_gelu(config: ModelConfig, what: str = "a sparsity file") -> None:
    """Calibrated thresholds (CATS, TEAL, WINA) make the small activations of SiLU and GELU gated FFNs (SwiGLU,
    GeGLU) sparse; ReLU and FATReLU models have their own zeros."""
    if config.activation in ("relu", "fatrelu"):
        raise HybridInferError(f"{what} is for SiLU or GELU gated FFNs; this model's FFN is "
                               f"{ACTIVATION_NAMES[config.activation]}, whose zeros --exact and --predictors already skip")
    if config.activation not in ("silu", "gelu"):
        raise HybridInferError(f"{what} is for SiLU or GELU gated FFNs; this model's FFN uses "
                               f"{ACTIVATION_NAMES.get(config.activation, config.activation)}: drop the sparsity options")


class ExactSparseFFN:
    """Lossless sparse FFN: neurons whose activation is zero contribute nothing."""

    predictors = None

    def __init__(self, config: ModelConfig):
        require_sparse_activation(config)
        self.config = config
        self.stats = SparseFFNStats()

    def mask(self, index: int, residual: torch.Tensor) -> torch.Tensor | None:
        """bool (T, n_ff): the candidate neurons of each token; None: every neuron."""
        return None

    def masked(self, index: int, residual: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """activation (T, n_ff) with the neurons outside the mask zeroed; one token's counts go to `stats`."""
        mask = self.mask(index, residual)
        if mask is not None:
            activation = activation * mask.to(activation.dtype)
        self.stats.all_tokens += activation.shape[0]
        self.stats.all_active += int((activation != 0).sum())
        if activation.shape[0] == 1:
            self.stats.tokens += 1
            self.stats.rows += int(mask.sum()) if mask is not None else self.config.n_ff
            self.stats.active += int((activation != 0).sum())
        return activation


class PredictedSparseFFN(ExactSparseFFN):
    """Sparse FFN over the neurons a predictor marks active for each token."""

    def __init__(self, config: ModelConfig, predictors):
        super().__init__(config)
        self.predictors = predictors

    def mask(self, index: int, residual: torch.Tensor) -> torch.Tensor:
        return self.predictors.active(index, residual)


class CalibratedSparseFFN(ExactSparseFFN):
    """CATS for SiLU and GELU models: activations with |act(gate)| below the layer's calibrated threshold are
    zeroed; CHESS: |act(gate)| times the neuron's scale (`SparsityThresholds.neuron_scales`)."""

    def __init__(self, config: ModelConfig, sparsity):
        """`sparsity`: a `sparsity.thresholds.SparsityThresholds` made for this model."""
        require_silu_or_gelu(config)
        self.config, self.sparsity = config, sparsity
        self.thresholds = torch.from_numpy(sparsity.thresholds[:, 0].copy())  # the one site: the activation
        self.scales = None if sparsity.neuron_scales is None else \
            [torch.from_numpy(checked_neuron_scales(config, s)) for s in sparsity.neuron_scales]
        self.stats = SparseFFNStats()

    def masked(self, index: int, residual: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        magnitude = activation.abs() if self.scales is None else activation.abs() * self.scales[index]
        kept = magnitude >= self.thresholds[index].to(activation.dtype)
        return super().masked(index, residual, activation * kept.to(activation.dtype))


def checked_neuron_scales(config: ModelConfig, scales) -> np.ndarray:
    """One layer's CHESS scales as float32 (n_ff,), refused when of another width."""
    scales = np.ascontiguousarray(scales, np.float32)
    if scales.shape != (config.n_ff,):
        raise HybridInferError(f"the sparsity file's neuron scales have shape {scales.shape}, not this model's "
                               f"({config.n_ff},)")
    return scales
