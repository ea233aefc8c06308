"""TEAL (arXiv 2408.14690) in the reference backend (the oracle): the inputs of every projection with their small
entries zeroed, set as `Transformer.inputs`.

A layer has four sites (`sparsity.thresholds.SITES["teal"]`), each with its calibrated magnitude threshold:
  0 attn_input         RMSNorm(x), the input of Q, K and V
  1 attn_output_input  the attention output, the input of the output projection
  2 ffn_input          RMSNorm(x), the input of gate and up
  3 ffn_down_input     SiLU(gate) * up, the input of down
An entry below its threshold is zeroed, so its column of the projection contributes nothing (the fast twin,
`runtime/teal.py`, does not read it). `TEALStats` counts the weights skipped, which both backends report.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..model_file.config import ModelConfig
from .sparse_ffn import require_silu


N_SITES = 4  # per layer


def site_weights(config: ModelConfig) -> np.ndarray:
    """(4,) weights per input entry of each site: the rows of the projections that entry's column feeds."""
    c = config
    return np.array([(c.n_head + 2 * c.n_head_kv) * c.head_dim, c.n_embd, 2 * c.n_ff, c.n_embd], np.float64)


class TEALStats:
    """Input entries seen and zeroed per site, summed over layers and tokens (every batch size), for reports."""

    label = "TEAL sparsity", "of projection weights skipped"  # what `sparsity` measures, for reports

    def __init__(self, config: ModelConfig):
        self.weights = site_weights(config)
        self.reset()

    def reset(self) -> None:
        self.seen = np.zeros(N_SITES, np.int64)
        self.zeroed = np.zeros(N_SITES, np.int64)

    def count(self, site: int, seen: int, zeroed: int) -> None:
        self.seen[site] += seen
        self.zeroed[site] += zeroed

    def site_sparsity(self) -> np.ndarray:
        """(4,): the share of each site's entries that were zeroed."""
        return self.zeroed / np.maximum(self.seen, 1)

    def sparsity(self, n_ff: int | None = None) -> float | None:
        """The share of the layers' projection weights skipped (TEAL's model-wide sparsity; None before any
        token). `n_ff` is accepted for the sparse FFN statistics' interface."""
        if not self.seen.any():
            return None
        return float((self.zeroed * self.weights).sum() / (self.seen * self.weights).sum())


class CalibratedSparseInputs:
    """TEAL: each projection input's entries below its site's threshold are zeroed. `observers` are called as
    observer(layer, site, values) with the values before zeroing (calibration)."""

    predictors = None  # (the sparse modes' interface: none here)

    def __init__(self, config: ModelConfig, thresholds: np.ndarray):
        """thresholds: (n_layer, 4) float32 (a TEAL `SparsityThresholds.thresholds`)."""
        require_silu(config)
        self.thresholds = torch.from_numpy(np.ascontiguousarray(thresholds, np.float32))
        self.stats = TEALStats(config)
        self.observers: list[Callable] = []

    @classmethod
    @contextmanager
    def observing(cls, transformer, observe: Callable, thresholds: np.ndarray | None = None) -> Iterator[None]:
        """`transformer` (a `model.Transformer`) with observe(layer, site, values) called at every site before its
        zeroing, for the duration: sparsified with `thresholds` (n_layer, 4), or dense (none; calibration; the
        packed twin: `runtime.teal.observing`)."""
        if thresholds is None:
            thresholds = np.zeros((transformer.config.n_layer, N_SITES), np.float32)
        part = cls(transformer.config, thresholds)
        part.observers.append(observe)
        inputs, transformer.inputs = transformer.inputs, part
        try:
            yield
        finally:
            transformer.inputs = inputs

    def masked(self, layer: int, site: int, values: torch.Tensor) -> torch.Tensor:
        """values (T, n) with the entries below the threshold of (layer, site) in magnitude zeroed."""
        for observe in self.observers:
            observe(layer, site, values.detach().cpu().float().numpy())
        kept = values.abs() >= self.thresholds[layer, site].to(values.dtype)
        self.stats.count(site, values.numel(), int((~kept).sum()))
        return values * kept.to(values.dtype)
