"""How good a predictor is, per layer and averaged over layers (the way ProSparse and PowerInfer report it).

Over the (token, neuron) pairs of a layer's held-out tokens:
    recall              truly active pairs predicted active / truly active pairs
    predicted sparsity  pairs predicted inactive / all pairs  (the share of neurons the FFN skips)
    true sparsity       truly inactive pairs / all pairs      (the best any predictor could skip at recall 1)
    prior recall        recall of the frequency prior at the same predicted sparsity: always predicting the
                        neurons that fired most often in training, as many as the predictor computes on
                        average (fractionally, for an exact match). A predictor is only useful above it.
Averages are plain means over layers. The predictor's size is reported as a share of the model's parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .calibrate import held_out_pairs, positive_logits, threshold_for_recall
from .collect import Collection, to_torch
from .model import PredictorSet


@dataclass
class LayerMetrics:
    layer: int
    rank: int
    threshold: float
    tokens: int
    recall: float
    predicted_sparsity: float
    true_sparsity: float
    prior_recall: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Counts:
    """Pair counts of one layer at one threshold."""
    true_positive: int = 0
    positive: int = 0
    predicted: int = 0
    total: int = 0

    @property
    def recall(self) -> float:
        return self.true_positive / self.positive if self.positive else 1.0

    @property
    def predicted_sparsity(self) -> float:
        return 1.0 - self.predicted / self.total if self.total else 0.0

    @property
    def true_sparsity(self) -> float:
        return 1.0 - self.positive / self.total if self.total else 0.0


@torch.no_grad()
def count(logits_fn, residuals: torch.Tensor, packed: torch.Tensor, n_ff: int, threshold: float) -> Counts:
    counts = Counts()
    for logits, labels in held_out_pairs(logits_fn, residuals, packed, n_ff):
        predicted = logits >= threshold
        counts.true_positive += int((predicted & labels).sum())
        counts.positive += int(labels.sum())
        counts.predicted += int(predicted.sum())
        counts.total += labels.numel()
    return counts


@torch.no_grad()
def sparsity_at_recall(logits_fn, residuals: torch.Tensor, packed: torch.Tensor, n_ff: int,
                       target_recall: float) -> tuple[float, Counts]:
    """The threshold reaching `target_recall` on these rows, and the counts there (its predicted sparsity is
    what a predictor calibrated on these rows would skip)."""
    threshold = threshold_for_recall(positive_logits(logits_fn, residuals, packed, n_ff), target_recall)
    return threshold, count(logits_fn, residuals, packed, n_ff, threshold)


def prior_recall(train_counts: np.ndarray, test_counts: np.ndarray, predicted_sparsity: float) -> float:
    """Recall of always predicting the most frequent training neurons, computing the same share of neurons
    (1 - predicted_sparsity) as the predictor. train_counts / test_counts: (n_ff,) activations per neuron."""
    positives = test_counts.sum()
    if positives == 0:
        return 1.0
    order = np.argsort(-train_counts, kind="stable")
    ranked = test_counts[order].astype(np.float64)
    k = (1.0 - predicted_sparsity) * len(ranked)
    whole = min(int(math.floor(k)), len(ranked))
    caught = ranked[:whole].sum() + (ranked[whole] * (k - whole) if whole < len(ranked) else 0.0)
    return float(caught / positives)


@torch.no_grad()
def evaluate(predictors: PredictorSet, collection: Collection, split: str = "test") -> list[LayerMetrics]:
    """Per-layer metrics of `predictors` (at their thresholds) on `split` of `collection`."""
    results = []
    for index in range(predictors.n_layer):
        residuals = to_torch(collection.residuals(split, index), predictors.device)
        packed = to_torch(collection.packed_masks(split, index), predictors.device)
        counts = count(lambda x, i=index: predictors.logits(i, x), residuals, packed, collection.n_ff,
                       predictors.thresholds[index])
        prior = prior_recall(collection.activation_counts("train", index), collection.activation_counts(split, index),
                             counts.predicted_sparsity)
        results.append(LayerMetrics(index, predictors.rank(index), predictors.thresholds[index],
                                    residuals.shape[0], counts.recall, counts.predicted_sparsity,
                                    counts.true_sparsity, prior))
    return results


def averages(layers: list[LayerMetrics]) -> dict:
    """Plain means over layers of recall, predicted and true sparsity, prior recall; mean rank."""
    def mean(name):
        values = [getattr(m, name) for m in layers if getattr(m, name) is not None]
        return float(np.mean(values)) if values else None

    return {name: mean(name) for name in ("recall", "predicted_sparsity", "true_sparsity", "prior_recall", "rank")}


def predictor_share(predictors: PredictorSet, model_parameters: int) -> float:
    """Predictor parameters as a share of the model's."""
    return predictors.n_params / model_parameters if model_parameters else 0.0


def model_parameter_count(model_file) -> int:
    """Parameters of a GGUF model (a hybridinfer GGUFFile), not counting predictor tensors stored inside it."""
    return sum(t.n_elements for name, t in model_file.tensors.items() if ".fc1." not in name and ".fc2." not in name)
