"""Calibrate magnitude thresholds: per layer and site, the quantile of the site's magnitudes at the site's target
sparsity (CATS: |act(gate . x)|, one site; TEAL: the inputs of the projections, four sites: `thresholds.SITES`;
WINA: TEAL's sites, each input entry's magnitude times the norm of its weight column, `wina.py`; CHESS: CATS's site,
|act_i| times the neuron's scale, measured first in a dense pass of its own, `chess.py`).

The dense model runs over calibration chunks while an observer bins every value's magnitude into a fine
log-spaced histogram per layer and site (memory independent of the token count): CATS through the models'
`observers`, TEAL and WINA through a TEAL part (`observe_sites`). Each threshold is then read off its histogram,
interpolated within the bin where the target share is reached (bins are 0.001 decades, 0.23%, wide: the threshold
is that close to the exact quantile). Each site's target is the model's (allocation "uniform"), or TEAL's and
WINA's per-site shares chosen greedily (`greedy.py`, allocation "greedy") from a second histogram per site, of
the squared contributions |x_i|^2 ||W[:, i]||^2 the zeroed entries take from the projection's output.

TEAL zeroes inputs in every layer, so a sparse model's later layers see smaller values than the dense model's and
thresholds read off the dense model zero more than the target (53% at 50% on SmolLM2). TEAL and WINA therefore
calibrate in PASSES[method] passes: each pass after the first observes the model sparsified with the previous
pass's thresholds (each site's values before its own zeroing) and reads the thresholds off those; a greedy
allocation is chosen on the first (dense) pass and kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..errors import HybridInferError
from ..runtime.activations import run_dense, run_observed
from ..reference.sparse_ffn import require_silu_or_gelu
from ..reference.sparse_inputs import CalibratedSparseInputs, site_weights, site_widths
from ..runtime import teal
from .chess import neuron_scales
from .greedy import allocate
from .thresholds import ALLOCATIONS, INPUT_METHODS, SITES, SparsityThresholds, check_target
from .wina import column_norms as wina_column_norms

if TYPE_CHECKING:
    from ..engine import Engine

LOG_LOW, LOG_HIGH, BINS = -12.0, 4.0, 16384  # log10 |activation| range and its bins (smaller go to the first)
PASSES = {"cats": 1, "teal": 2, "wina": 2, "chess": 1}  # calibration passes over the chunks (above)


def runs_over_chunks(method: str, passes: int | None = None) -> int:
    """How many times calibration runs the model over the chunks: its passes, and CHESS's pass for its scales."""
    return (PASSES[method] if passes is None else passes) + (method == "chess")


def calibrate_thresholds(engine: Engine, chunks: list[list[int]], target: float, method: str = "cats",
                         on_chunk: Callable[[int], None] | None = None, passes: int | None = None,
                         allocation: str = "uniform") -> SparsityThresholds:
    """Thresholds that zero the share `target` of each layer's (and site's) values over `chunks` (token lists), in
    `passes` passes over them (default PASSES[method]; more than one: TEAL and WINA only); with `allocation`
    "greedy" (TEAL, WINA), per-site shares whose weighted mean, the share of projection weights skipped, is
    `target`."""
    require_silu_or_gelu(engine.config, f"{method.upper()} calibration")
    check_target(target)
    passes = PASSES[method] if passes is None else passes
    one_site = method not in INPUT_METHODS  # CATS, CHESS: the FFN activation
    if passes < 1 or (passes > 1 and one_site):
        raise HybridInferError(f"{method} calibrates in 1 pass{'' if one_site else ' or more'}, not {passes}")
    if allocation not in ALLOCATIONS or (allocation == "greedy" and one_site):
        raise HybridInferError(f"--allocation {allocation} is not one {method} takes: "
                               f"{'uniform' if one_site else ', '.join(ALLOCATIONS)}")
    config = engine.config
    scales = neuron_scales(engine, chunks, on_chunk) if method == "chess" else None
    norms = wina_column_norms(engine.file, config) if method == "wina" else \
        [(s,) for s in scales] if scales is not None else None  # per layer, per site: the criterion's weights
    # the greedy allocation's error weighs each entry by its column's norm (TEAL's too)
    energy_norms = None if allocation != "greedy" else norms if norms is not None else \
        wina_column_norms(engine.file, config)
    shape = (config.n_layer, len(SITES[method]))
    levels = np.full(shape, target)  # each site's share to zero
    thresholds = None
    for step in range(passes):
        counts = torch.zeros((*shape, BINS), dtype=torch.float64)
        energies = torch.zeros((*shape, BINS), dtype=torch.float64)  # sum of (|x_i| ||W[:, i]||)^2 per bin

        def observe(index: int, site: int, values) -> None:
            values = torch.as_tensor(values)
            magnitude = values.reshape(-1, values.shape[-1]).abs().float()
            criterion = magnitude if norms is None else magnitude * torch.from_numpy(norms[index][site])
            bins = bin_of(criterion).reshape(-1)
            counts[index, site] += torch.bincount(bins, minlength=BINS).double()
            if energy_norms is not None and step == 0:
                energy = (magnitude.double() * torch.from_numpy(energy_norms[index][site]).double()) ** 2
                energies[index, site] += torch.bincount(bins, energy.reshape(-1), minlength=BINS)

        observe_sites(engine, method, chunks, observe, on_chunk, thresholds, norms)
        if step == 0 and allocation == "greedy":
            levels = allocate(counts.numpy(), energies.numpy(), site_weights(config) * site_widths(config), target)
        thresholds = np.array([[quantile(h, p) for h, p in zip(layer, shares)]
                               for layer, shares in zip(counts.numpy(), levels)], np.float32)
    reached = np.array([[share_below(h, t) for h, t in zip(layer, limits)]
                        for layer, limits in zip(counts.numpy(), thresholds)], np.float32)
    return SparsityThresholds(method, float(target), sum(map(len, chunks)), thresholds, reached, engine.fingerprint,
                              norms if method == "wina" else None, allocation, scales)


def bin_of(magnitudes: torch.Tensor) -> torch.Tensor:
    """The histogram bin (int64) of each magnitude (below 10^LOG_LOW, zeros included: the first)."""
    position = (torch.log10(magnitudes).clamp(LOG_LOW, LOG_HIGH) - LOG_LOW) * (BINS / (LOG_HIGH - LOG_LOW))
    return position.long().clamp(0, BINS - 1)


def measure_sparsity(engine: Engine, chunks: list[list[int]], sparsity: SparsityThresholds,
                     on_chunk: Callable[[int], None] | None = None) -> np.ndarray:
    """(n_layer, n_sites): the share of each layer's (and site's) values over `chunks` whose magnitude (WINA: times
    its column norm; CHESS: its neuron's scale) is below its threshold (held-out text says how well the calibration
    carries over): CATS's and CHESS's over
    the dense model's values, TEAL's and WINA's over the values of the model they sparsify."""
    thresholds, norms = sparsity.thresholds, sparsity.column_norms
    if sparsity.neuron_scales is not None:  # CHESS
        norms = [(s,) for s in sparsity.neuron_scales]
    below = np.zeros(thresholds.shape, np.int64)
    seen = np.zeros(thresholds.shape, np.int64)

    def count(index: int, site: int, values) -> None:
        criterion = torch.as_tensor(values).abs()
        if norms is not None:
            criterion = criterion * torch.from_numpy(norms[index][site])
        below[index, site] += int((criterion < float(thresholds[index, site])).sum())
        seen[index, site] += criterion.numel()

    observe_sites(engine, sparsity.method, chunks, count, on_chunk,
                  thresholds if sparsity.zeroes_inputs else None, norms)
    return below / np.maximum(seen, 1)


def observe_sites(engine: Engine, method: str, chunks: list[list[int]], observe: Callable,
                  on_chunk: Callable[[int], None] | None = None, thresholds: np.ndarray | None = None,
                  column_norms=None) -> None:
    """Run `chunks` through the dense model with observe(layer, site, values) called at every site of `method`;
    TEAL or WINA `thresholds` (n_layer, 4) (WINA's with its `column_norms`): through the model they sparsify
    instead (each site observed before its zeroing)."""
    if method not in INPUT_METHODS:  # CATS, CHESS: the FFN activation
        run_observed(engine, chunks, lambda index, residual, activation: observe(index, 0, activation), on_chunk)
        return
    observing = teal.observing if engine.backend == "packed" else CalibratedSparseInputs.observing  # TEAL's parts
    run_dense(engine, chunks, on_chunk, lambda: observing(engine.model, observe, thresholds, column_norms))


def quantile(histogram: np.ndarray, share: float) -> float:
    """The magnitude below which `share` of the histogram's mass lies (log-linear within the bin)."""
    cumulative = np.cumsum(histogram)
    wanted = share * cumulative[-1]
    b = min(int(np.searchsorted(cumulative, wanted)), BINS - 1)
    below = cumulative[b - 1] if b else 0.0
    within = (wanted - below) / histogram[b] if histogram[b] else 0.0
    width = (LOG_HIGH - LOG_LOW) / BINS
    return float(10 ** (LOG_LOW + (b + within) * width))


def share_below(histogram: np.ndarray, threshold: float) -> float:
    """The share of the histogram's mass below `threshold` (log-linear within its bin)."""
    position = (np.log10(max(threshold, 10 ** LOG_LOW)) - LOG_LOW) / ((LOG_HIGH - LOG_LOW) / BINS)
    b = min(int(position), BINS - 1)
    return float((histogram[:b].sum() + histogram[b] * (position - b)) / histogram.sum())
