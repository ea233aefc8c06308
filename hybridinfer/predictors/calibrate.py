"""Per-layer logit thresholds calibrated on held-out tokens to reach a target activation recall.

recall(t) = (truly active neurons with logit >= t) / (truly active neurons) falls as t rises, so the largest
threshold with recall(t) >= R is the k-th largest logit among the truly active neurons, k = ceil(R * P) for
P truly active (token, neuron) pairs. A larger threshold would predict fewer neurons (more sparsity) but miss
the target; a smaller one computes neurons the target does not need.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .collect import Collection, to_torch, unpack_bits
from .model import PredictorSet

DEFAULT_THRESHOLD = 0.0  # a layer without any active neuron in the held-out data keeps PowerInfer's default
LOGIT_CHUNK = 4096  # tokens whose logits are held at once


def threshold_for_recall(positive_logits: torch.Tensor, target_recall: float) -> float:
    """The largest t with (positive_logits >= t).mean() >= target_recall (1-D float tensor of the logits of the
    truly active pairs)."""
    n = positive_logits.numel()
    if n == 0:
        return DEFAULT_THRESHOLD
    k = min(n, max(1, math.ceil(target_recall * n - 1e-9)))
    value = float(torch.kthvalue(positive_logits.float().cpu(), n - k + 1).values)
    # one float32 step down, so logits recomputed in another summation order still pass
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def held_out_pairs(logits_fn: Callable[[torch.Tensor], torch.Tensor], residuals: torch.Tensor, packed: torch.Tensor,
                   n_ff: int, chunk: int = LOGIT_CHUNK):
    """(logits (B, n_ff) float32, labels (B, n_ff) bool) over a layer's rows, `chunk` tokens at a time.
    residuals: (N, n_embd) float16 or float32; packed: (N, ceil(n_ff / 8)) uint8, both on one device."""
    for begin in range(0, residuals.shape[0], chunk):
        x = residuals[begin:begin + chunk].float()
        yield logits_fn(x), unpack_bits(packed[begin:begin + chunk], n_ff)


def positive_logits(logits_fn, residuals: torch.Tensor, packed: torch.Tensor, n_ff: int) -> torch.Tensor:
    """1-D: the logit of every truly active (token, neuron) pair."""
    parts = [logits[labels] for logits, labels in held_out_pairs(logits_fn, residuals, packed, n_ff)]
    return torch.cat(parts) if parts else torch.zeros(0)


def calibrate_layer(logits_fn, residuals: torch.Tensor, packed: torch.Tensor, n_ff: int, target_recall: float) -> float:
    return threshold_for_recall(positive_logits(logits_fn, residuals, packed, n_ff), target_recall)


@torch.no_grad()
def calibrate(predictors: PredictorSet, collection: Collection, target_recall: float,
              split: str = "validation") -> list[float]:
    """One threshold per layer reaching `target_recall` on `split` of `collection`."""
    thresholds = []
    for index in range(predictors.n_layer):
        residuals = to_torch(collection.residuals(split, index), predictors.device)
        packed = to_torch(collection.packed_masks(split, index), predictors.device)
        thresholds.append(calibrate_layer(lambda x, i=index: predictors.logits(i, x), residuals, packed,
                                          collection.n_ff, target_recall))
    return thresholds
