"""Plain torch twins of the GPU side's norm kernels (`norm_kernels.py`); they also serve the CPU device.

    rms_norm(x, w, eps)                     x (T, n) float32 -> x / sqrt(mean(x^2) + eps) * w
    add_rms_norm(x, a, scale, w, eps, p)    x += scale * a (in place), then (x, rms_norm(x, w, eps)): a block's
                                            residual add and the next block's norm in one step
    add(x, a, scale, b=None, p, eps)        x += scale * (a + b) in place: a split FFN's two halves and the
                                            residual add in one step

With a post-block norm weight p (gemma3), the block's output a (or a + b) is RMS-normed with p before it is added.
"""

from __future__ import annotations

import torch

from ..reference.model import rms_norm as _rms_norm


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_norm(x, weight, eps)


def add_rms_norm(x: torch.Tensor, a: torch.Tensor, scale: float, weight: torch.Tensor, eps: float,
                 post_norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x.add_(a if post_norm is None else _rms_norm(a, post_norm, eps), alpha=scale)
    return x, _rms_norm(x, weight, eps)


def add(x: torch.Tensor, a: torch.Tensor, scale: float, b: torch.Tensor | None = None,
        post_norm: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """x += scale * (a + b), b None: x += scale * a; in place; a + b RMS-normed with `post_norm` first if given."""
    total = a if b is None else a + b
    return x.add_(total if post_norm is None else _rms_norm(total, post_norm, eps), alpha=scale)
