"""Held-out evaluation: next-token loss / perplexity and FFN activation statistics, in float32.

A neuron is *active* for a token when its activation output act(gate(x)) is non-zero. For each layer we
count, over all evaluated tokens, how often each neuron is active; sparsity is the share of zero values.
With SiLU nothing is exactly zero, so its sparsity is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .model import SparseLlamaForCausalLM


@dataclass
class EvalResult:
    loss: float  # mean next-token cross-entropy (nats)
    n_tokens: int
    active_counts: list[torch.Tensor]  # per layer, (intermediate_size,) int64: tokens on which each neuron fired

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def sparsity_per_layer(self) -> list[float]:
        return [1.0 - counts.sum().item() / (self.n_tokens * counts.numel()) for counts in self.active_counts]

    @property
    def average_sparsity(self) -> float:
        per_layer = self.sparsity_per_layer
        return sum(per_layer) / len(per_layer)

    def top_neuron_share(self, fraction: float = 0.2) -> list[float]:
        """Per layer: share of all activations that the most active `fraction` of neurons account for."""
        shares = []
        for counts in self.active_counts:
            total = counts.sum().item()
            top = counts.sort(descending=True).values[: max(1, round(fraction * counts.numel()))]
            shares.append(top.sum().item() / total if total else 0.0)
        return shares


@torch.no_grad()
def evaluate(model: SparseLlamaForCausalLM, eval_windows: torch.Tensor, batch_size: int = 16) -> EvalResult:
    """eval_windows: (n, seq_len + 1) token windows; every position of every window is scored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, n_tokens = 0.0, 0
    counts = [torch.zeros(model.config.intermediate_size, dtype=torch.int64, device=device)
              for _ in range(model.config.num_hidden_layers)]
    for start in range(0, eval_windows.shape[0], batch_size):
        block = eval_windows[start:start + batch_size].to(device)
        logits, activations = model(block[:, :-1], collect_activations=True)
        loss_sum += F.cross_entropy(logits.flatten(0, 1).float(), block[:, 1:].flatten(), reduction="sum").item()
        n_tokens += block[:, 1:].numel()
        for layer_counts, activation in zip(counts, activations):
            layer_counts += (activation != 0).flatten(0, 1).sum(0)
    model.train(was_training)
    return EvalResult(loss_sum / n_tokens, n_tokens, [c.cpu() for c in counts])
