"""A PNG of a sparsity file: each layer's calibrated thresholds (per site) and the sparsity they reached."""

from __future__ import annotations

import os

import numpy as np

from ..atomic_file import atomic_output
from ..plotting import pyplot
from .thresholds import SparsityThresholds


def plot_thresholds(sparsity: SparsityThresholds, path: str | os.PathLike) -> None:
    """Left: each layer's threshold per site (log scale); right: the share it zeroed on the calibration text."""
    plt = pyplot()
    layers = np.arange(sparsity.thresholds.shape[0])
    sites = sparsity.sites
    width = 0.8 / len(sites)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s, site in enumerate(sites):
        offset = (s - (len(sites) - 1) / 2) * width
        left.bar(layers + offset, sparsity.thresholds[:, s], width, label=site)
        right.bar(layers + offset, sparsity.calibration_sparsity[:, s], width, label=site)
    what = {"cats": "|act(gate)|", "teal": "|input|", "wina": "|input| x column norm",
            "chess": "|act(gate)| x neuron scale"}[sparsity.method] + " threshold"
    left.set(xlabel="layer", ylabel=what, title=f"{sparsity.method.upper()} thresholds", yscale="log")
    right.axhline(sparsity.target, color="grey", ls=":", label=f"target {sparsity.target}")
    right.set(xlabel="layer", ylabel="share of values zeroed", ylim=(0, 1),
              title=f"Sparsity on {sparsity.n_tokens} calibration tokens")
    right.legend(fontsize="small")
    if len(sites) > 1:
        left.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)
