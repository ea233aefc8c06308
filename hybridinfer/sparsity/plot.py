"""A PNG of a sparsity file: each layer's calibrated threshold and the sparsity it reached."""

from __future__ import annotations

import os

import numpy as np

from ..atomic_file import atomic_output
from ..hybrid.profiling import pyplot
from .thresholds import SparsityThresholds


def plot_thresholds(sparsity: SparsityThresholds, path: str | os.PathLike) -> None:
    plt = pyplot()
    layers = np.arange(len(sparsity.thresholds))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(layers, sparsity.thresholds, color="tab:blue")
    left.set(xlabel="layer", ylabel="|SiLU(gate)| threshold", title=f"{sparsity.method.upper()} thresholds")
    right.bar(layers, sparsity.calibration_sparsity, color="tab:green")
    right.axhline(sparsity.target, color="grey", ls=":", label=f"target {sparsity.target}")
    right.set(xlabel="layer", ylabel="share of activations zeroed", ylim=(0, 1),
              title=f"Sparsity on {sparsity.n_tokens} calibration tokens")
    right.legend()
    figure.tight_layout()
    with atomic_output(path) as partial:
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)
