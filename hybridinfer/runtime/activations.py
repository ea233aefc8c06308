"""Per-neuron activation frequencies and the runs of an engine that observe its dense model.

A neuron fires for a token when its activation act(gate . x) is non-zero, i.e. above the FATReLU threshold;
`profile_activations` counts that over calibration text (`hybridinfer profile`; `hybrid/activations_file.py`
writes the counts, which decide the hot neurons kept on the GPU). `run_observed` and `run_dense` run token chunks
through the dense model with observers of every layer's residual stream and FFN activation (also for calibrating
sparsity thresholds, `sparsity/calibrate.py`). `engine` is a loaded `hybridinfer.Engine`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch

from ..model_file.fingerprint import Fingerprint


@dataclass
class ActivationProfile:
    counts: np.ndarray  # (n_layer, n_ff) int64
    n_tokens: int
    fingerprint: Fingerprint

    @property
    def frequency(self) -> np.ndarray:
        """(n_layer, n_ff): share of tokens for which each neuron fired."""
        return self.counts / max(self.n_tokens, 1)

    def layer_sparsity(self) -> np.ndarray:
        """(n_layer,): share of (token, neuron) activations that were zero."""
        return 1.0 - self.frequency.mean(axis=1)

    def layer_skew(self, top_share: float = 0.2) -> np.ndarray:
        """(n_layer,): share of all activations covered by the `top_share` most active neurons of each layer."""
        ordered = -np.sort(-self.counts, axis=1)
        top = max(1, int(round(top_share * self.counts.shape[1])))
        totals = np.maximum(ordered.sum(axis=1), 1)
        return ordered[:, :top].sum(axis=1) / totals

    def summary(self) -> dict:
        sparsity, skew = self.layer_sparsity(), self.layer_skew()
        return {"n_tokens": self.n_tokens, "average_sparsity": float(sparsity.mean()),
                "average_top20_coverage": float(skew.mean()),
                "layers": [{"layer": i, "sparsity": float(s), "top20_coverage": float(k)}
                           for i, (s, k) in enumerate(zip(sparsity, skew))]}


def profile_activations(engine, chunks: list[list[int]],
                        on_chunk: Callable[[int], None] | None = None) -> ActivationProfile:
    """Run `chunks` (token lists) through the dense model, counting firing neurons per layer."""
    config = engine.config
    counts = torch.zeros((config.n_layer, config.n_ff), dtype=torch.int64)

    def count(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        counts[index] += (activation != 0).sum(dim=0)

    run_observed(engine, chunks, count, on_chunk)
    return ActivationProfile(counts.numpy(), sum(map(len, chunks)), engine.fingerprint)


def run_observed(engine, chunks: list[list[int]], observer: Callable,
                 on_chunk: Callable[[int], None] | None = None) -> None:
    """Run `chunks` (token lists) through the dense model with `observer(layer, residual, activation)` called
    for every CPU layer (`Decoder.observers`); `on_chunk(tokens)` after each chunk."""
    engine.model.observers.append(observer)
    try:
        run_dense(engine, chunks, on_chunk)
    finally:
        engine.model.observers.remove(observer)


def run_dense(engine, chunks: list[list[int]], on_chunk: Callable[[int], None] | None = None,
              plugged: Callable[[], ContextManager] = nullcontext) -> None:
    """Run `chunks` (token lists) through the dense model, with `plugged()` entered inside `every_neuron` (a part
    that observes the dense model: TEAL calibration); `on_chunk(tokens)` after each chunk."""
    with engine.every_neuron(), plugged():
        for chunk in chunks:
            engine.reset()
            engine.feed(chunk)  # every position evaluated, the last one's logits only (a large vocabulary's cost)
            if on_chunk is not None:
                on_chunk(len(chunk))
