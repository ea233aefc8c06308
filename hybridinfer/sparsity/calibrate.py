"""Calibrate magnitude thresholds: per layer and site, the quantile of the site's magnitudes at the target sparsity
(CATS: |SiLU(gate . x)|, one site; TEAL: the inputs of the projections, four sites: `thresholds.SITES`).

The dense model runs over calibration chunks while an observer bins every value's magnitude into a fine
log-spaced histogram per layer and site (memory independent of the token count): CATS through the models'
`observers`, TEAL through a TEAL part (`observe_sites`). Each threshold is then read off its histogram,
interpolated within the bin where the target share is reached (bins are 0.001 decades, 0.23%, wide: the threshold
is that close to the exact quantile). TEAL's thresholds are uniform: every site zeroes the target share of its
entries (the paper's greedy allocation across sites is not done).

TEAL zeroes inputs in every layer, so a sparse model's later layers see smaller values than the dense model's and
thresholds read off the dense model zero more than the target (53% at 50% on SmolLM2). TEAL therefore calibrates
in PASSES["teal"] passes: each pass after the first observes the model sparsified with the previous pass's
thresholds (each site's values before its own zeroing) and reads the thresholds off those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..errors import HybridInferError
from ..runtime.activations import run_dense, run_observed
from ..reference.sparse_ffn import require_silu
from ..reference.sparse_inputs import CalibratedSparseInputs
from ..runtime import teal
from .thresholds import SITES, SparsityThresholds, check_target

if TYPE_CHECKING:
    from ..engine import Engine

LOG_LOW, LOG_HIGH, BINS = -12.0, 4.0, 16384  # log10 |activation| range and its bins (smaller go to the first)
PASSES = {"cats": 1, "teal": 2}  # calibration passes over the chunks (above)


def calibrate_thresholds(engine: Engine, chunks: list[list[int]], target: float, method: str = "cats",
                         on_chunk: Callable[[int], None] | None = None, passes: int | None = None
                         ) -> SparsityThresholds:
    """Thresholds that zero the share `target` of each layer's (and site's) values over `chunks` (token lists), in
    `passes` passes over them (default PASSES[method]; more than one: TEAL only)."""
    require_silu(engine.config, f"{method.upper()} calibration")
    check_target(target)
    passes = PASSES[method] if passes is None else passes
    if passes < 1 or (passes > 1 and method != "teal"):
        raise HybridInferError(f"{method} calibrates in 1 pass{'' if method == 'cats' else ' or more'}, not {passes}")
    thresholds = None
    for _ in range(passes):
        histograms = torch.zeros((engine.config.n_layer, len(SITES[method]), BINS), dtype=torch.float64)

        def observe(index: int, site: int, values) -> None:
            magnitude = torch.log10(torch.as_tensor(values).abs().float()).clamp(LOG_LOW, LOG_HIGH)
            histograms[index, site] += torch.histc(magnitude, BINS, LOG_LOW, LOG_HIGH).double()

        observe_sites(engine, method, chunks, observe, on_chunk, thresholds)
        thresholds = np.array([[quantile(h, target) for h in layer] for layer in histograms.numpy()], np.float32)
    reached = np.array([[share_below(h, t) for h, t in zip(layer, limits)]
                        for layer, limits in zip(histograms.numpy(), thresholds)], np.float32)
    return SparsityThresholds(method, float(target), sum(map(len, chunks)), thresholds, reached, engine.fingerprint)


def measure_sparsity(engine: Engine, chunks: list[list[int]], sparsity: SparsityThresholds,
                     on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_layer, n_sites): the share of each layer's (and site's) values over `chunks` whose magnitude is below its
    threshold (held-out text says how well the calibration carries over): CATS's over the dense model's values,
    TEAL's over the values of the model it sparsifies."""
    thresholds = sparsity.thresholds
    below = np.zeros(thresholds.shape, np.int64)
    seen = np.zeros(thresholds.shape, np.int64)

    def count(index: int, site: int, values) -> None:
        values = torch.as_tensor(values)
        below[index, site] += int((values.abs() < float(thresholds[index, site])).sum())
        seen[index, site] += values.numel()

    observe_sites(engine, sparsity.method, chunks, count, on_chunk,
                  thresholds if sparsity.method == "teal" else None)
    return below / np.maximum(seen, 1)


def observe_sites(engine: Engine, method: str, chunks: list[list[int]], observe: Callable,
                  on_chunk: Callable[[int], None] | None = None, thresholds: np.ndarray | None = None) -> None:
    """Run `chunks` through the dense model with observe(layer, site, values) called at every site of `method`;
    TEAL `thresholds` (n_layer, 4): through the model they sparsify instead (each site observed before its zeroing)."""
    if method == "cats":
        run_observed(engine, chunks, lambda index, residual, activation: observe(index, 0, activation), on_chunk)
        return
    observing = teal.observing if engine.backend == "packed" else CalibratedSparseInputs.observing  # TEAL's parts
    run_dense(engine, chunks, on_chunk, lambda: observing(engine.model, observe, thresholds))


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
