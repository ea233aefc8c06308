"""A greedy allocation of a model-wide target sparsity across TEAL's (or WINA's) sites, after TEAL's block-wise
greedy optimization (arXiv 2408.14690, section 4.2): every site starts at 0; step by step, the site whose next
STEP of sparsity adds the least output error per weight skipped is raised, until the share of all projection
weights skipped reaches the target.

The error of zeroing a share p of a site's input entries is estimated from the calibration text instead of by
running the block as the paper does: the share of the projection's output energy those entries carried,
sum of |x_i|^2 ||W[:, i]||^2 over the zeroed entries / the same over all (exact for orthogonal columns), read off
the per-site histograms `calibrate.py` keeps of the entries' criterion (their count and that energy per bin).
"""

from __future__ import annotations

import heapq

import numpy as np

STEP = 0.01  # of a site's entries, per greedy step
MOST = 0.95  # no site zeroes more than this share of its entries


def error_curves(counts: np.ndarray, energies: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(n_layer, n_sites, len(levels)): per site the share of its output energy lost when the share `levels` of
    its entries (the smallest by the criterion the histograms bin) is zeroed. counts, energies: (n_layer,
    n_sites, bins)."""
    count_share = np.cumsum(counts, -1) / np.maximum(counts.sum(-1, keepdims=True), 1e-300)
    energy_share = np.cumsum(energies, -1) / np.maximum(energies.sum(-1, keepdims=True), 1e-300)
    curves = np.empty((*counts.shape[:2], len(levels)))
    for index in np.ndindex(*counts.shape[:2]):
        curves[index] = np.interp(levels, count_share[index], energy_share[index])
    return curves


def allocate(counts: np.ndarray, energies: np.ndarray, site_sizes: np.ndarray, target: float) -> np.ndarray:
    """(n_layer, n_sites) shares of entries to zero per site such that sum(share * size) / sum(size), the share of
    the weights skipped (site_sizes (n_sites,): the weights each site's inputs multiply), reaches `target`, raised
    greedily by the least error per weight (above)."""
    n_layer, n_sites = counts.shape[:2]
    levels = np.round(np.arange(0.0, MOST + STEP / 2, STEP), 6)
    curves = error_curves(counts, energies, levels)
    sizes = np.broadcast_to(np.asarray(site_sizes, np.float64), (n_layer, n_sites))
    total, wanted, skipped = sizes.sum(), target * sizes.sum(), 0.0
    step = np.zeros((n_layer, n_sites), np.int64)  # each site's level, in STEPs

    def cost(i: int, s: int) -> float:  # error added per weight by the site's next step
        k = step[i, s]
        return (curves[i, s, k + 1] - curves[i, s, k]) / (STEP * sizes[i, s] / total)

    heap = [(cost(i, s), i, s) for i in range(n_layer) for s in range(n_sites)]
    heapq.heapify(heap)
    while skipped < wanted and heap:
        _, i, s = heapq.heappop(heap)
        step[i, s] += 1
        skipped += STEP * sizes[i, s]
        if step[i, s] + 1 < len(levels):
            heapq.heappush(heap, (cost(i, s), i, s))
    return levels[step]
