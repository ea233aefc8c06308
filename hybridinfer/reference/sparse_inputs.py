"""TEAL (arXiv 2408.14690) and WINA (arXiv 2505.19427) in the reference backend (the oracle): the inputs of every
projection with their small entries zeroed, set as `Transformer.inputs`.

A layer has four sites (`sparsity.thresholds.SITES["teal"]`), each with its calibrated threshold:
  0 attn_input         RMSNorm(x), the input of Q, K and V
  1 attn_output_input  the attention output, the input of the output projection
  2 ffn_input          RMSNorm(x), the input of gate and up
  3 ffn_down_input     act(gate) * up (SiLU or GELU), the input of down
These are what the projections multiply, also in models whose blocks end in norms (gemma3: those norm the
projections' outputs). An entry x_i below its threshold is zeroed (TEAL: |x_i|; WINA: |x_i| * ||W[:, i]||_2, the
norm of the weight column it multiplies, which `column_norms` holds), so its column of the projection contributes
nothing (the fast twin, `runtime/teal.py`, does not read it). `TEALStats` counts the weights skipped, which both
backends report.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import HybridInferError
from ..model_file.config import ModelConfig
from .sparse_ffn import require_silu_or_gelu


N_SITES = 4  # per layer


def site_widths(config: ModelConfig) -> tuple[int, int, int, int]:
    """Each site's input width: n_embd, n_head * head_dim, n_embd, n_ff."""
    c = config
    return c.n_embd, c.n_head * c.head_dim, c.n_embd, c.n_ff


def checked_column_norms(config: ModelConfig, column_norms) -> list[tuple[np.ndarray, ...]]:
    """WINA's column norms (per layer, per site), each checked to be as wide as its site's input."""
    widths = site_widths(config)
    if len(column_norms) != config.n_layer or any(
            len(layer) != N_SITES or any(n.shape != (w,) for n, w in zip(layer, widths)) for layer in column_norms):
        raise HybridInferError(f"WINA column norms of other shapes than this model's sites {widths} x "
                               f"{config.n_layer} layers: make the sparsity file again with `hybridinfer sparsify`")
    return [tuple(np.ascontiguousarray(n, np.float32) for n in layer) for layer in column_norms]


def site_weights(config: ModelConfig) -> np.ndarray:
    """(4,) weights per input entry of each site: the rows of the projections that entry's column feeds."""
    c = config
    return np.array([(c.n_head + 2 * c.n_head_kv) * c.head_dim, c.n_embd, 2 * c.n_ff, c.n_embd], np.float64)


class TEALStats:
    """Input entries seen and zeroed per site, summed over layers and tokens (every batch size), for reports."""

    def __init__(self, config: ModelConfig, method: str = "teal"):
        self.weights = site_weights(config)
        self.label = f"{method.upper()} sparsity", "of projection weights skipped"  # what `sparsity` measures
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
    """TEAL and WINA: each projection input's entries below its site's threshold are zeroed. `observers` are called
    as observer(layer, site, values) with the values before zeroing (calibration)."""

    predictors = None  # (the sparse modes' interface: none here)

    def __init__(self, config: ModelConfig, thresholds: np.ndarray, column_norms=None, method: str = "teal"):
        """thresholds: (n_layer, 4) float32 (a TEAL or WINA `SparsityThresholds.thresholds`); column_norms: WINA's
        (per layer, per site), None for TEAL."""
        require_silu_or_gelu(config)
        self.thresholds = torch.from_numpy(np.ascontiguousarray(thresholds, np.float32))
        self.column_norms = None if column_norms is None else \
            [[torch.from_numpy(n) for n in layer] for layer in checked_column_norms(config, column_norms)]
        self.stats = TEALStats(config, method)
        self.observers: list[Callable] = []

    @classmethod
    def of(cls, config: ModelConfig, sparsity) -> "CalibratedSparseInputs":
        """The part for a TEAL or WINA `SparsityThresholds`."""
        return cls(config, sparsity.thresholds, sparsity.column_norms, sparsity.method)

    @classmethod
    @contextmanager
    def observing(cls, transformer, observe: Callable, thresholds: np.ndarray | None = None,
                  column_norms=None) -> Iterator[None]:
        """`transformer` (a `model.Transformer`) with observe(layer, site, values) called at every site before its
        zeroing, for the duration: sparsified with `thresholds` (n_layer, 4) (and WINA's `column_norms`), or dense
        (none; calibration; the packed twin: `runtime.teal.observing`)."""
        if thresholds is None:
            thresholds = np.zeros((transformer.config.n_layer, N_SITES), np.float32)
        part = cls(transformer.config, thresholds, column_norms)
        part.observers.append(observe)
        inputs, transformer.inputs = transformer.inputs, part
        try:
            yield
        finally:
            transformer.inputs = inputs

    def masked(self, layer: int, site: int, values: torch.Tensor) -> torch.Tensor:
        """values (T, n) with the entries below the threshold of (layer, site) zeroed: their magnitude (TEAL), or
        their magnitude times their weight column's norm (WINA)."""
        for observe in self.observers:
            observe(layer, site, values.detach().cpu().float().numpy())
        criterion = values.abs()
        if self.column_norms is not None:
            criterion = criterion * self.column_norms[layer][site].to(values.dtype)
        kept = criterion >= self.thresholds[layer, site].to(values.dtype)
        self.stats.count(site, values.numel(), int((~kept).sum()))
        return values * kept.to(values.dtype)
