"""How far one model's next-token distributions are from another's, row by row: what `perplexity` reports for a
sparse mode against dense, and `llamacpp_reference` for us against llama.cpp."""

from __future__ import annotations

import numpy as np
import torch


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of (rows, n_vocab) logits."""
    return torch.log_softmax(torch.from_numpy(np.asarray(logits)).double(), dim=-1).numpy()


def kl_rows(reference_logp: np.ndarray, other_logp: np.ndarray) -> np.ndarray:
    """KL(reference || other) of each row of two (rows, n_vocab) log-probability arrays."""
    return (np.exp(reference_logp) * (reference_logp - other_logp)).sum(-1)
