"""The training loop: AdamW, linear warm-up + cosine learning rate, optional progressive L1 sparsity term.

Loss = next-token cross-entropy + λ(t) · L1, where L1 is the mean absolute FFN activation output
|act(gate(x))| over tokens and neurons, averaged over layers (for ReLU/FATReLU outputs, which are >= 0,
that is their mean). λ(t) follows `schedule.l1_factor` counted from the step regularization began.

A `TrainingRun` is a model, its optimizer and its step in a schedule whose length is the *budget*
(`TrainSettings.total_steps`): the learning rate at step s is the same for every run, so runs forked
from each other (`fork`) and trained to the same step have had exactly the same data, steps and learning
rates — they differ only in what the ProSparse steps changed (activation, L1 term).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn import functional as F

from .data import TrainBatches
from .evaluate import evaluate
from .model import SparseLlamaForCausalLM
from .schedule import RegularizationStage, l1_factor, learning_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    total_steps: int  # the budget: every variant is trained for this many steps; the LR schedule spans it
    batch_size: int = 16
    seq_len: int = 256
    peak_lr: float = 2e-3
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50  # validation loss and sparsity every this many steps (and at the end of each phase)
    mixed_precision: bool = True  # bf16 autocast for matmuls (fast on CPUs with AVX512-BF16/AMX, and on GPUs)
    seed: int = 0


@dataclass
class TrainPoint:
    step: int
    loss: float  # next-token loss of this step's batch
    l1: float  # the L1 term (mean |act(gate(x))|, averaged over layers); 0 when not computed
    l1_factor: float  # λ at this step
    lr: float


@dataclass
class ValidationPoint:
    step: int
    loss: float
    sparsity: float  # average share of zero activation outputs


@dataclass
class TrainingLog:
    name: str
    train: list[TrainPoint] = field(default_factory=list)
    validation: list[ValidationPoint] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)  # {name, activation, start, end, seconds, l1_stages}
    forked_at: int | None = None  # the step this run branched from another (its history before is the parent's)

    def to_dict(self) -> dict:
        return asdict(self)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ffn_l1(activations: list[torch.Tensor]) -> torch.Tensor:
    """Mean |activation output| over tokens and neurons, averaged over layers (float32 scalar)."""
    return torch.stack([a.abs().mean(dtype=torch.float32) for a in activations]).mean()


def make_optimizer(model: SparseLlamaForCausalLM, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (embeddings, projections), none on the RMSNorm gains."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    gains = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": settings.weight_decay}, {"params": gains, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.peak_lr, betas=(0.9, 0.95), eps=1e-8)


class TrainingRun:
    """A model, its optimizer and its position `step` in the shared schedule."""

    def __init__(self, name: str, model: SparseLlamaForCausalLM, settings: TrainSettings,
                 optimizer: torch.optim.Optimizer | None = None, step: int = 0, log_: TrainingLog | None = None):
        self.name, self.model, self.settings, self.step = name, model, settings, step
        self.optimizer = optimizer or make_optimizer(model, settings)
        self.log = log_ or TrainingLog(name)

    def fork(self, name: str) -> "TrainingRun":
        """An independent copy (model, optimizer state, history) that continues from the same step."""
        model = copy.deepcopy(self.model)
        optimizer = make_optimizer(model, self.settings)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        history = copy.deepcopy(self.log)
        history.name, history.forked_at = name, self.step
        return TrainingRun(name, model, self.settings, optimizer, self.step, history)

    def train_until(self, end_step: int, batches: TrainBatches, validation_windows: torch.Tensor, phase: str,
                    l1_stages: list[RegularizationStage] | None = None, l1_start_step: int = 0) -> None:
        """Train from self.step to end_step. With l1_stages, add λ(step - l1_start_step) · L1 to the loss."""
        s, model = self.settings, self.model
        device = next(model.parameters()).device
        start_step, started = self.step, time.perf_counter()
        model.train()
        while self.step < end_step:
            lr = learning_rate(self.step, s.peak_lr, s.warmup_steps, s.total_steps, s.final_lr_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            factor = l1_factor(self.step - l1_start_step, l1_stages) if l1_stages else 0.0
            inputs, targets = (t.to(device) for t in batches.batch(self.step))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.mixed_precision):
                logits, activations = model(inputs, collect_activations=True)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            l1 = ffn_l1(activations) if l1_stages else torch.zeros((), device=device)
            (loss + factor * l1).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.log.train.append(TrainPoint(self.step, loss.item(), l1.item(), factor, lr))
            self.step += 1
            if self.step % s.eval_every == 0 or self.step == end_step:
                self.validate(validation_windows)
        seconds = time.perf_counter() - started
        self.log.phases.append({"name": phase, "activation": model.config.hidden_act, "start": start_step,
                                "end": end_step, "seconds": round(seconds, 1),
                                "l1_stages": [asdict(stage) for stage in l1_stages] if l1_stages else None,
                                "l1_start_step": l1_start_step if l1_stages else None})

    def validate(self, validation_windows: torch.Tensor) -> ValidationPoint:
        result = evaluate(self.model, validation_windows)
        point = ValidationPoint(self.step, result.loss, result.average_sparsity)
        if self.log.validation and self.log.validation[-1].step == self.step:
            self.log.validation.pop()  # measured again at the same step (e.g. right after a fork + substitution)
        self.log.validation.append(point)
        recent = self.log.train[-self.settings.eval_every:]
        train_loss = f"{sum(p.loss for p in recent) / len(recent):.3f}" if recent else "-"
        log.info("%s step %d: train loss %s, validation loss %.3f (ppl %.2f), sparsity %.1f%%",
                 self.name, self.step, train_loss, point.loss, result.perplexity, 100 * point.sparsity)
        return point

    def save_checkpoint(self, path: str) -> None:
        torch.save({"name": self.name, "config": self.model.config.to_dict(), "step": self.step,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "settings": asdict(self.settings), "log": self.log.to_dict()}, path)
