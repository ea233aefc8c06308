"""Train one predictor per layer on collected (residual, active mask) rows.

The recipe is the published one (PowerInfer's predictors; docs/predictors.md): logits = fc2 · ReLU(fc1 · x),
trained with a weighted binary cross-entropy in which a truly inactive neuron weighs about the layer's
activation rate p and an active one weighs 1 (implemented as BCE with pos_weight = 1/p, the same loss up to the
constant factor p),
Adam, shuffled minibatches, and the checkpoint with the best validation score kept.

Validation score (early stopping, and the automatic rank choice): the predicted sparsity at the target recall
on validation tokens — put the threshold where validation recall is exactly `target_recall`, then count the
share of neurons predicted inactive. That is precisely the number the finished predictor delivers, because
calibrate.py sets the shipped threshold the same way; recall at logit >= 0 (the published metric) would reward
a different trade-off (its operating point drifts with the loss weighting during training) and would pick
checkpoints for a threshold we do not use. It is reported as `validation_recall_at_zero` for comparison.

Step size: Adam at `lr` (default 0.08 / sqrt(n_embd), in proportion to fc1's initial weights, so a
step moves them by a similar fraction at every model width); it halves at each evaluation without
improvement, and training stops after `patience` of them.

Rank: `rank` fixed for every layer (default n_embd / 4, PowerInfer's 1024 for n_embd 4096), or `auto_rank`:
per layer, train ranks n_embd/32, n_embd/16, ... n_embd/2 in turn and stop climbing as soon as doubling the
rank gains less than AUTO_MIN_GAIN of validation score; easy layers end up small.

Inputs: each residual dimension is divided by its root mean square over the layer's training rows while
training (`input_scale`), and the division is folded into fc1 at the end, so the file holds the plain
PowerInfer form. Residual norms grow about a hundredfold from the first layer to the last and a few
"massive activation" dimensions are a thousand times larger than the rest; without this, one step size cannot
suit every layer, and late layers' training stalls.

Training runs on CUDA when available (`device`); the data stays on disk (memory-mapped) and is moved to the
device in shards of at most `resident_bytes`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HybridInferError

from . import ridge
from .calibrate import calibrate_layer
from .collect import Collection, to_torch, unpack_bits
from .metrics import count, sparsity_at_recall
from .model import PredictorSet

DEFAULT_RANK_DIVISOR = 4
RANK_MULTIPLE = 8
AUTO_LADDER_DIVISORS = (32, 16, 8, 4, 2)
AUTO_MIN_GAIN = 0.005  # predicted sparsity (a share of neurons) a doubling of the rank must buy
MIN_ACTIVATION_RATE = 1e-4  # floor for the loss weighting of layers that almost never fire
LR_SCALE = 0.08
IMPROVEMENT = 1e-4  # smallest validation score gain that resets the patience


@dataclass
class TrainSettings:
    rank: int | None = None  # None: default_rank(n_embd)
    auto_rank: bool = False
    target_recall: float = 0.95
    epochs: int = 30  # at most; early stopping usually ends sooner
    batch_size: int = 512
    lr: float | None = None  # None: default_lr(n_embd)
    patience: int = 3  # evaluations without improvement before stopping (the learning rate halves at each)
    eval_steps: int = 500  # at most this many steps between evaluations (and at least one per epoch)
    eval_rows: int = 16384  # validation tokens scored during training (calibration uses them all)
    device: str | None = None  # None: "cuda" when available, else "cpu"
    seed: int = 0
    resident_bytes: int = 2 << 30  # training rows held on the device at once
    method: str = "sgd"  # "sgd": train the network; "ridge": the closed-form reduced-rank fit of ridge.py


@dataclass
class LayerReport:
    layer: int
    rank: int
    threshold: float  # calibrated on all validation tokens
    activation_rate: float  # share of (token, neuron) pairs active in the training tokens
    validation_sparsity: float  # predicted sparsity at the target recall (the score)
    validation_recall_at_zero: float  # recall at logit >= 0, PowerInfer's default threshold
    steps: int
    seconds: float
    tried: dict[int, float] = field(default_factory=dict)  # rank -> validation score, when the rank is automatic

    def as_dict(self) -> dict:
        return asdict(self)


def default_lr(n_embd: int) -> float:
    """Adam's step size, scaled like fc1's initial weights (1/sqrt(n_embd)): 0.01 at n_embd 64, 0.00125 at 4096."""
    return LR_SCALE / math.sqrt(n_embd)


def default_rank(n_embd: int) -> int:
    return _round_rank(n_embd / DEFAULT_RANK_DIVISOR)


def rank_ladder(n_embd: int) -> list[int]:
    return sorted({_round_rank(n_embd / d) for d in AUTO_LADDER_DIVISORS})


def _round_rank(value: float) -> int:
    return max(RANK_MULTIPLE, int(round(value / RANK_MULTIPLE)) * RANK_MULTIPLE)


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HybridInferError(f"--device {name}: CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HybridInferError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None


class LayerData:
    """One layer's training rows (float16 residuals, packed masks) from memory-mapped arrays, served as
    shuffled float32 minibatches on `device`. Rows move to the device a shard at a time; a single shard is
    loaded once and kept."""

    def __init__(self, residuals: np.ndarray, packed: np.ndarray, n_ff: int, device: torch.device,
                 resident_bytes: int):
        self.residuals, self.packed, self.n_ff, self.device = residuals, packed, n_ff, device
        row_bytes = residuals.shape[1] * 2 + packed.shape[1]
        self.shard_rows = max(1, min(len(residuals), resident_bytes // row_bytes))
        self._cached = None

    def __len__(self) -> int:
        return self.residuals.shape[0]

    def _load(self, begin: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = begin + self.shard_rows
        x = to_torch(self.residuals[begin:end], self.device)
        y = to_torch(self.packed[begin:end], self.device)
        return x, y

    def shards(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = list(range(0, len(self), self.shard_rows))
        if len(starts) == 1:
            if self._cached is None:
                self._cached = self._load(0)
            yield self._cached
            return
        for i in torch.randperm(len(starts), generator=generator).tolist():
            yield self._load(starts[i])

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x (B, n_embd) float32, y (B, n_ff) float32 0/1) over every row once, in random order."""
        for x, packed in self.shards(generator):
            order = torch.randperm(x.shape[0], generator=generator).to(self.device)
            for begin in range(0, x.shape[0], batch_size):
                rows = order[begin:begin + batch_size]
                yield x[rows].float(), unpack_bits(packed[rows], self.n_ff).float()


def input_scale(residuals: np.ndarray, chunk: int = 65536) -> torch.Tensor:
    """(n_embd,) float32: each residual dimension's root mean square over the rows (floored at 1e-6 of the
    largest). Residual norms grow a hundredfold through a model's layers, and a few dimensions carry "massive
    activations" thousands of times larger than the rest; training on x / scale puts every layer and
    dimension on one footing, and the scale is folded into fc1 afterwards."""
    total = np.zeros(residuals.shape[1], dtype=np.float64)
    for begin in range(0, residuals.shape[0], chunk):
        block = np.asarray(residuals[begin:begin + chunk], dtype=np.float32)
        total += np.square(block, dtype=np.float64).sum(axis=0)
    rms = np.sqrt(total / max(1, residuals.shape[0]))
    return torch.from_numpy(np.maximum(rms, 1e-6 * max(rms.max(), 1e-30)).astype(np.float32))


class _Net(torch.nn.Module):
    """fc2 · ReLU(fc1 · (x / scale)); `exported()` folds the scale into fc1, giving the plain PowerInfer form."""

    def __init__(self, n_embd: int, rank: int, n_ff: int, scale: torch.Tensor, generator: torch.Generator):
        super().__init__()
        # torch.nn.Linear's default initialisation, drawn from our generator: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        self.fc1 = torch.nn.Parameter((torch.rand(rank, n_embd, generator=generator) * 2 - 1) / math.sqrt(n_embd))
        self.fc2 = torch.nn.Parameter((torch.rand(n_ff, rank, generator=generator) * 2 - 1) / math.sqrt(rank))
        self.register_buffer("inverse_scale", 1.0 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x * self.inverse_scale) @ self.fc1.T) @ self.fc2.T  # (B, n_ff)

    def exported(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(fc1 (rank, n_embd), fc2 (n_ff, rank)) on the CPU, acting on the unscaled residual."""
        with torch.no_grad():
            return (self.fc1 * self.inverse_scale).cpu(), self.fc2.detach().cpu()


@dataclass
class _Fit:
    net: _Net
    score: float
    recall_at_zero: float
    steps: int


def train_layer(data: LayerData, eval_x: torch.Tensor, eval_packed: torch.Tensor, n_embd: int, n_ff: int,
                rank: int, activation_rate: float, scale: torch.Tensor, settings: TrainSettings, seed: int) -> _Fit:
    """Fit one predictor of hidden width `rank` on inputs x / scale; return the checkpoint with the best
    validation score."""
    generator = torch.Generator().manual_seed(seed)
    device = data.device
    net = _Net(n_embd, rank, n_ff, scale, generator).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr or default_lr(n_embd))
    pos_weight = torch.tensor(1.0 / max(activation_rate, MIN_ACTIVATION_RATE), device=device)
    steps_per_epoch = math.ceil(len(data) / settings.batch_size)
    eval_every = max(1, min(steps_per_epoch, settings.eval_steps))
    best, best_state, stale, step = -1.0, None, 0, 0

    def evaluate() -> bool:
        """Score the current weights; keep them if best. False when patience has run out."""
        nonlocal best, best_state, stale
        with torch.no_grad():
            _, counts = sparsity_at_recall(net, eval_x, eval_packed, n_ff, settings.target_recall)
        if counts.predicted_sparsity > best + IMPROVEMENT:
            best, stale = counts.predicted_sparsity, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            return True
        stale += 1
        for group in optimizer.param_groups:
            group["lr"] *= 0.5
        return stale < settings.patience

    going = True
    for _ in range(settings.epochs):
        for x, y in data.batches(settings.batch_size, generator):
            loss = F.binary_cross_entropy_with_logits(net(x), y, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % eval_every == 0:
                going = evaluate()
                if not going:
                    break
        if going and step % eval_every != 0:  # every epoch ends with an evaluation
            going = evaluate()
        if not going:
            break
    net.load_state_dict(best_state)
    with torch.no_grad():
        recall_at_zero = count(net, eval_x, eval_packed, n_ff, 0.0).recall
    return _Fit(net, best, recall_at_zero, step)


def train_predictors(collection: Collection, settings: TrainSettings,
                     progress: Callable[[LayerReport], None] | None = None) -> tuple[PredictorSet, list[LayerReport]]:
    """A calibrated PredictorSet (on the CPU) for every layer of `collection`, and what training found."""
    if not 0 < settings.target_recall <= 1:
        raise HybridInferError(f"--target-recall must be in (0, 1], got {settings.target_recall}")
    device = pick_device(settings.device)
    n_embd, n_ff = collection.n_embd, collection.n_ff
    ranks = rank_ladder(n_embd) if settings.auto_rank else [settings.rank or default_rank(n_embd)]
    if ranks[0] < 1:
        raise HybridInferError(f"--rank must be positive, got {ranks[0]}")
    if settings.method not in METHODS:
        raise HybridInferError(f"--method must be one of {', '.join(METHODS)}, got {settings.method!r}")
    if settings.method == "ridge" and (settings.auto_rank or ranks[0] < 2):
        raise HybridInferError("--method ridge needs a fixed --rank of at least 2 (its hidden width is even)")
    fc1, fc2, thresholds, reports = [], [], [], []
    for layer in range(collection.n_layer):
        start = time.perf_counter()
        data = LayerData(collection.residuals("train", layer), collection.packed_masks("train", layer), n_ff, device,
                         settings.resident_bytes)
        rate = float(collection.activation_counts("train", layer).sum()) / (len(data) * n_ff)
        scale = input_scale(collection.residuals("train", layer))
        val_x = to_torch(collection.residuals("validation", layer), device)
        val_packed = to_torch(collection.packed_masks("validation", layer), device)
        eval_x, eval_packed = val_x[:settings.eval_rows], val_packed[:settings.eval_rows]
        if settings.method == "ridge":
            fitted = _ridge_layer(collection, layer, ranks[0], rate, val_x, val_packed, settings, start)
            fc1.append(fitted.fc1)
            fc2.append(fitted.fc2)
            thresholds.append(fitted.report.threshold)
            reports.append(fitted.report)
            if progress is not None:
                progress(fitted.report)
            continue
        fit, tried = None, {}
        for rank in ranks:
            candidate = train_layer(data, eval_x, eval_packed, n_embd, n_ff, rank, rate, scale, settings,
                                    settings.seed * 1000 + layer)
            tried[rank] = candidate.score
            if fit is not None and candidate.score < fit.score + AUTO_MIN_GAIN:
                break
            fit = candidate
        with torch.no_grad():
            threshold = calibrate_layer(fit.net, val_x, val_packed, n_ff, settings.target_recall)
        layer_fc1, layer_fc2 = fit.net.exported()
        fc1.append(layer_fc1)
        fc2.append(layer_fc2)
        thresholds.append(threshold)
        report = LayerReport(layer, fc1[-1].shape[0], threshold, rate, fit.score, fit.recall_at_zero, fit.steps,
                             time.perf_counter() - start, tried if settings.auto_rank else {})
        reports.append(report)
        if progress is not None:
            progress(report)
    return PredictorSet(fc1, fc2, thresholds), reports


METHODS = ("sgd", "ridge")


@dataclass
class _RidgeLayer:
    fc1: torch.Tensor
    fc2: torch.Tensor
    report: LayerReport


def _ridge_layer(collection: Collection, layer: int, rank: int, rate: float, val_x: torch.Tensor,
                 val_packed: torch.Tensor, settings: TrainSettings, start: float) -> _RidgeLayer:
    """One layer by the closed-form fit (ridge.py), calibrated and scored like a trained one."""
    fc1, fc2 = ridge.fit_layer(collection.residuals("train", layer), collection.packed_masks("train", layer),
                               collection.n_ff, rank, seed=settings.seed * 1000 + layer)
    fc1, fc2 = fc1.to(val_x.device), fc2.to(val_x.device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.float() @ fc1.T) @ fc2.T

    with torch.no_grad():
        score = sparsity_at_recall(logits, val_x, val_packed, collection.n_ff, settings.target_recall)[1]
        threshold = calibrate_layer(logits, val_x, val_packed, collection.n_ff, settings.target_recall)
        recall_at_zero = count(logits, val_x, val_packed, collection.n_ff, 0.0).recall
    report = LayerReport(layer, fc1.shape[0], threshold, rate, score.predicted_sparsity, recall_at_zero, 0,
                         time.perf_counter() - start, {})
    return _RidgeLayer(fc1.cpu(), fc2.cpu(), report)
