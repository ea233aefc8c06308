"""Calibrate CATS thresholds: per layer, the quantile of |SiLU(gate . x)| at the target sparsity.

The dense model runs over calibration chunks while an observer (`PackedTransformer.observers`) bins every
activation's magnitude into a fine log-spaced histogram per layer (memory independent of the token count);
each layer's threshold is then read off its histogram, interpolated within the bin where the target share of
activations is reached (bins are 0.001 decades, 0.23%, wide: the threshold is that close to the exact quantile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..hybrid.profiling import run_observed
from ..reference.sparse_ffn import require_silu
from .thresholds import SparsityThresholds, check_target

if TYPE_CHECKING:
    from ..engine import Engine

LOG_LOW, LOG_HIGH, BINS = -12.0, 4.0, 16384  # log10 |activation| range and its bins (smaller go to the first)


def calibrate_thresholds(engine: Engine, chunks: list[list[int]], target: float,
                         on_chunk: Callable[[int], None] | None = None) -> SparsityThresholds:
    """Thresholds that zero the share `target` of each layer's activations over `chunks` (token lists)."""
    require_silu(engine.config, "CATS calibration")
    check_target(target)
    histograms = torch.zeros((engine.config.n_layer, BINS), dtype=torch.float64)

    def observe(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        magnitude = torch.log10(activation.abs().float()).clamp(LOG_LOW, LOG_HIGH)
        histograms[index] += torch.histc(magnitude, BINS, LOG_LOW, LOG_HIGH).double()

    run_observed(engine, chunks, observe, on_chunk)
    thresholds = np.array([quantile(h, target) for h in histograms.numpy()], np.float32)
    reached = np.array([share_below(h, t) for h, t in zip(histograms.numpy(), thresholds)], np.float32)
    return SparsityThresholds("cats", float(target), sum(map(len, chunks)), thresholds, reached, engine.fingerprint)


def measure_sparsity(engine: Engine, chunks: list[list[int]], thresholds: np.ndarray,
                     on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_layer,): the share of each layer's activations over `chunks` whose magnitude is below its threshold
    (the dense model's activations: held-out text says how well the calibration carries over)."""
    below = np.zeros(len(thresholds), np.int64)
    seen = np.zeros(len(thresholds), np.int64)
    limits = torch.from_numpy(np.asarray(thresholds, np.float32))

    def count(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        below[index] += int((activation.abs() < limits[index]).sum())
        seen[index] += activation.numel()

    run_observed(engine, chunks, count, on_chunk)
    return below / np.maximum(seen, 1)


def quantile(histogram: np.ndarray, share: float) -> float:
    """The magnitude below which `share` of the histogram's mass lies (log-linear within the bin)."""
    cumulative = np.cumsum(histogram)
    wanted = share * cumulative[-1]
    b = int(np.searchsorted(cumulative, wanted))
    below = cumulative[b - 1] if b else 0.0
    within = (wanted - below) / histogram[b] if histogram[b] else 0.0
    width = (LOG_HIGH - LOG_LOW) / BINS
    return float(10 ** (LOG_LOW + (b + within) * width))


def share_below(histogram: np.ndarray, threshold: float) -> float:
    """The share of the histogram's mass below `threshold` (log-linear within its bin)."""
    position = (np.log10(max(threshold, 10 ** LOG_LOW)) - LOG_LOW) / ((LOG_HIGH - LOG_LOW) / BINS)
    b = min(int(position), BINS - 1)
    return float((histogram[:b].sum() + histogram[b] * (position - b)) / histogram.sum())
