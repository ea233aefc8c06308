"""Activation threshold shifting: choose FATReLU's threshold T by measuring sparsity against held-out loss.

Candidates are quantiles of the positive activation outputs of the ReLU model on validation text (so each
candidate zeroes a known share of the values that ReLU keeps), rounded to 3 significant digits. Every
candidate is evaluated; the chosen T is the largest whose perplexity is at most `tolerance` (relative)
above the ReLU model's (T = 0). One T serves every layer, as in the published checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .evaluate import evaluate
from .model import SparseLlamaForCausalLM

DEFAULT_QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MAX_SAMPLED_VALUES = 1 << 22


@dataclass
class ThresholdPoint:
    threshold: float
    loss: float
    perplexity: float
    sparsity: float
    perplexity_increase: float  # relative to T = 0


@dataclass
class ThresholdSweep:
    points: list[ThresholdPoint]  # ascending threshold, the first is T = 0
    tolerance: float  # largest relative perplexity increase allowed
    chosen: ThresholdPoint

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def candidate_thresholds(model: SparseLlamaForCausalLM, windows: torch.Tensor,
                         quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> list[float]:
    """Quantiles of the positive activation outputs (all layers pooled) on the given windows."""
    model.eval()
    device = next(model.parameters()).device
    _, activations = model(windows[:, :-1].to(device), collect_activations=True)
    positive = torch.cat([a[a > 0].float().flatten() for a in activations])
    if positive.numel() == 0:
        return []
    stride = max(1, positive.numel() // MAX_SAMPLED_VALUES)
    sample = positive[::stride]
    values = torch.quantile(sample, torch.tensor(quantiles, device=sample.device)).tolist()
    return sorted({_three_significant_digits(v) for v in values if v > 0})


def _three_significant_digits(value: float) -> float:
    digits = 2 - int(math.floor(math.log10(abs(value))))
    return round(value, digits)


def sweep_thresholds(model: SparseLlamaForCausalLM, windows: torch.Tensor, thresholds: list[float],
                     tolerance: float) -> ThresholdSweep:
    """Evaluate FATReLU at every threshold (plus T = 0) on `windows`; the model is left at its original activation."""
    original = (model.config.hidden_act, model.config.hidden_act_param)
    points = []
    baseline = None
    try:
        for threshold in [0.0] + sorted(t for t in thresholds if t > 0):
            model.set_activation("fatrelu", threshold)
            result = evaluate(model, windows)
            baseline = baseline if baseline is not None else result.perplexity
            points.append(ThresholdPoint(threshold, result.loss, result.perplexity, result.average_sparsity,
                                         result.perplexity / baseline - 1.0))
    finally:
        model.set_activation(*original)
    chosen = max((p for p in points if p.perplexity_increase <= tolerance), key=lambda p: p.threshold)
    return ThresholdSweep(points, tolerance, chosen)
