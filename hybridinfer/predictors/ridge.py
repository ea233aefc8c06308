"""A closed-form predictor fit: reduced-rank ridge regression of the activation mask on the residual.

    W = argmin ||X W - Y||^2 + lam ||W||^2     X (N, n_embd) residuals, Y (N, n_ff) 0/1 masks
    W_r = W V V^T                             V: the top-r right singular vectors of X W (reduced rank)

The linear map x -> x W_r is written in the predictor's PowerInfer form fc2 . ReLU(fc1 . x) exactly, with
hidden width 2r: fc1 = [U; -U], fc2 = [V, -V] for U = (W V)^T, since ReLU(z) - ReLU(-z) = z. The masks are
not centred: the form has no bias term, and each neuron's base rate is carried by the residual's
near-constant directions (centring measured far worse). The per-layer threshold is then calibrated as for
trained predictors.

When a few thousand tokens are all there is and the residual is wide (n_embd 4096), gradient training of the
ReLU network finds little of a low-rank gate, where this fit finds more of it in seconds (the predicted
sparsity of both at equal recall on the synthetic ProSparse-7B: docs/synthetic-7b.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .collect import to_torch, unpack_bits

DEFAULT_RIDGE = 1e-2  # lam as a multiple of the mean diagonal of X^T X (the best of 1e-2, 1e-1 and 1 tried)
CHUNK = 4096  # rows summed at once: memory stays (n_embd + n_ff) * n_embd, whatever the row count


@torch.no_grad()
def fit_layer(residuals: np.ndarray, packed_masks: np.ndarray, n_ff: int, hidden: int, ridge: float = DEFAULT_RIDGE,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(fc1 (hidden, n_embd), fc2 (n_ff, hidden)) float32, hidden even, from one layer's collected rows:
    residuals (N, n_embd) and packed masks (N, ceil(n_ff / 8)), read CHUNK rows at a time."""
    n_embd = residuals.shape[1]
    gram = torch.zeros(n_embd, n_embd, dtype=torch.float64)
    cross = torch.zeros(n_embd, n_ff, dtype=torch.float64)  # X^T Y
    for begin in range(0, residuals.shape[0], CHUNK):
        x = to_torch(residuals[begin:begin + CHUNK]).double()
        y = unpack_bits(to_torch(packed_masks[begin:begin + CHUNK]), n_ff).double()
        gram += x.T @ x
        cross += x.T @ y
    lam = ridge * gram.diagonal().mean()
    regularized = gram + lam * torch.eye(n_embd, dtype=gram.dtype)
    weight = torch.linalg.solve(regularized, cross)  # (n_embd, n_ff)
    # right singular vectors of X W = those of C^T W, with X^T X = C C^T: no N x n_ff matrix is ever formed
    factor = torch.linalg.cholesky(gram + 1e-9 * gram.diagonal().mean() * torch.eye(n_embd, dtype=gram.dtype))
    rank = min(hidden // 2, n_embd, n_ff)
    torch.manual_seed(seed)  # svd_lowrank's random projection
    _, _, v = torch.svd_lowrank(factor.T @ weight, q=min(rank + 10, n_embd, n_ff), niter=4)
    v = v[:, :rank]  # (n_ff, rank)
    u = (weight @ v).T  # (rank, n_embd)
    return torch.cat([u, -u]).float(), torch.cat([v, -v], dim=1).float()
