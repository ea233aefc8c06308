"""The predictor network: per layer, logits = fc2 · ReLU(fc1 · x), and a neuron is predicted active iff its
logit >= the layer's threshold.

This is PowerInfer's shape (two bias-free linear maps, hidden width D = the layer's *rank*), with x the
residual stream before ffn_norm — the same vector the model observers see. The network is positively
homogeneous (logits(c·x) = c·logits(x) for c > 0), like the ReLU gate it imitates once RMSNorm divides the
scale out, so a threshold of 0 is scale-free; calibrated thresholds (calibrate.py) trade that for a target
recall.
"""

from __future__ import annotations

import torch


class PredictorSet:
    """One predictor per layer. fc1[i]: (rank_i, n_embd), fc2[i]: (n_ff, rank_i), float32 torch tensors."""

    def __init__(self, fc1: list[torch.Tensor], fc2: list[torch.Tensor], thresholds: list[float] | None = None):
        if len(fc1) != len(fc2) or not fc1:
            raise ValueError(f"need one fc1 and one fc2 per layer, got {len(fc1)} and {len(fc2)}")
        self.fc1 = [w.detach().to(torch.float32).contiguous() for w in fc1]
        self.fc2 = [w.detach().to(torch.float32).contiguous() for w in fc2]
        self.n_embd = self.fc1[0].shape[1]
        self.n_ff = self.fc2[0].shape[0]
        for i, (a, b) in enumerate(zip(self.fc1, self.fc2)):
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != self.n_embd or b.shape[0] != self.n_ff \
                    or b.shape[1] != a.shape[0]:
                raise ValueError(f"layer {i}: fc1 {tuple(a.shape)} and fc2 {tuple(b.shape)} do not chain "
                                 f"(n_embd {self.n_embd}, n_ff {self.n_ff})")
        self.thresholds = [0.0] * len(self.fc1) if thresholds is None else [float(t) for t in thresholds]
        if len(self.thresholds) != len(self.fc1):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.fc1)} layers")

    @property
    def n_layer(self) -> int:
        return len(self.fc1)

    @property
    def ranks(self) -> list[int]:
        return [w.shape[0] for w in self.fc1]

    @property
    def device(self) -> torch.device:
        return self.fc1[0].device

    def rank(self, index: int) -> int:
        return self.fc1[index].shape[0]

    @property
    def n_params(self) -> int:
        return sum(a.numel() + b.numel() for a, b in zip(self.fc1, self.fc2))

    def logits(self, index: int, residual: torch.Tensor) -> torch.Tensor:
        """residual (T, n_embd) -> logits (T, n_ff) float32, on this set's device."""
        x = residual.to(device=self.device, dtype=torch.float32)
        # x @ W.T is a transposed view, not a copy: BLAS reads W's rows directly (a GEMV per token)
        return torch.relu(x @ self.fc1[index].T) @ self.fc2[index].T

    def active(self, index: int, residual: torch.Tensor) -> torch.Tensor:
        """residual (T, n_embd) -> bool (T, n_ff): the neurons predicted to fire in layer `index`."""
        return self.logits(index, residual) >= self.thresholds[index]

    def with_thresholds(self, thresholds: list[float]) -> "PredictorSet":
        return PredictorSet(self.fc1, self.fc2, thresholds)

    def to(self, device: str | torch.device) -> "PredictorSet":
        return PredictorSet([w.to(device) for w in self.fc1], [w.to(device) for w in self.fc2], self.thresholds)
