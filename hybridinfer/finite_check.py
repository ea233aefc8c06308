"""Stop at the first layer whose output is not finite, naming it: NaN or inf weights (a corrupt file) would
otherwise surface only as NaN logits, far from their cause. One `isfinite` over the residual stream per layer
costs microseconds beside the layer itself."""

from __future__ import annotations

import numpy as np
import torch

from .errors import HybridInferError


def require_finite(x: np.ndarray | torch.Tensor, where: str, start_pos: int) -> None:
    """Raise if `x` (the residual stream after `where`, e.g. "layer 3") holds NaN or inf."""
    finite = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not finite:
        raise non_finite_error(where, start_pos)


def non_finite_error(where: str, start_pos: int) -> HybridInferError:
    """The error for values gone NaN/inf in `where` (also raised when a kernel divides by a sum they made 0)."""
    return HybridInferError(
        f"the values became NaN or infinite in {where} (positions from {start_pos}): its weights hold NaN/inf "
        "values or overflow float32; the file is corrupt: re-download or re-convert it")
