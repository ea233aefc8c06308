"""The plain torch twin of the predictor's threshold kernel (`predictor_kernels.py`); it also serves the CPU device.

    masks(scores, threshold, hot_index)   scores (T, n_ff) = fc2 . ReLU(fc1 . x) -> (mask (T, n_ff) bool: the
                                          predicted neurons, hot_mask (T, n_hot) bool: the same at the hot ones)
"""

from __future__ import annotations

import torch


def masks(scores: torch.Tensor, threshold: float, hot_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = scores >= threshold
    return mask, mask[:, hot_index]
