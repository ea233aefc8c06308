"""Plain torch twins of the GPU kernels (`triton_kernels.py`): what each must compute. They also serve the CPU
device in production, so they dequantize at most `weights.CHUNK_ELEMENTS` elements at a time, never a whole
quantized matrix.

The FFN over a layer's n_hot hot neurons: gate and up hold the neurons' rows (n_hot, n_embd), down_t the rows of
the transposed down projection (row i = neuron i's output vector, (n_hot, n_embd)), and

    a = FATReLU(gate . x) restricted to the mask,   h = a * (up . x),   out = sum_i h_i * down_t[i]

(FATReLU(g) = g if g >= threshold else 0; threshold 0 is ReLU). Only the rows that fire need their up rows (S2),
and only the rows with h != 0 their down_t rows (S3).
"""

from __future__ import annotations

import torch

from ..reference.model import rms_norm
from .weights import CHUNK_ELEMENTS, DeviceMatrix, dequantize_rows, stored_columns, take_rows


def matvec(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = x @ W.T."""
    out = torch.empty((x.shape[0], m.rows), dtype=torch.float32, device=x.device)
    x = _in_stored_order(m, x)
    for start, stop, weight in _chunks(m):
        out[:, start:stop] = x @ weight.T
    return out


def norm_matvec(m: DeviceMatrix, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = RMSNorm(x, weight, eps) @ W.T."""
    return matvec(m, rms_norm(x, weight, eps))


def matvec_relu(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = ReLU(x @ W.T)."""
    return matvec(m, x).relu_()


def matvec_at_least(m: DeviceMatrix, x: torch.Tensor, threshold: float, out: torch.Tensor | None = None,
                    copy: tuple[torch.Tensor, torch.Tensor] | None = None,
                    copy_norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) bool = x @ W.T >= threshold (written into `out` if given); copy (source,
    destination), float32 tensors of one size: source is also copied into destination, RMSNorm(source) with
    copy_norm (weight, eps) if given."""
    if copy is not None:
        source = copy[0] if copy_norm is None else rms_norm(copy[0], *copy_norm)
        copy[1].copy_(source.reshape(copy[1].shape))
    if out is None:
        return matvec(m, x) >= threshold
    return torch.ge(matvec(m, x), threshold, out=out)


def add_matvec(out: torch.Tensor, m: DeviceMatrix, x: torch.Tensor, scale: float) -> torch.Tensor:
    """out (T, rows) float32 += scale * x @ W.T in place; returns out."""
    return out.add_(matvec(m, x), alpha=scale)


def gate_up(gate: DeviceMatrix, up: DeviceMatrix, x: torch.Tensor, activation: str, threshold: float,
            norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x (T, cols) float32 -> h (T, rows) float32 = act(x @ gate.T) * (x @ up.T): act "silu", "gelu" (its tanh
    approximation), "relu" or "fatrelu" (g where g >= threshold, else 0); norm (weight, eps): of RMSNorm(x)."""
    if norm is not None:
        x = rms_norm(x, *norm)
    g = matvec(gate, x)
    if activation == "silu":
        a = torch.nn.functional.silu(g)
    elif activation == "gelu":
        a = torch.nn.functional.gelu(g, approximate="tanh")
    else:
        a = g.masked_fill_(g < threshold, 0.0)
    return a.mul_(matvec(up, x))


def hot_ffn(gate: DeviceMatrix, up: DeviceMatrix, down_t: DeviceMatrix, x: torch.Tensor, mask: torch.Tensor | None,
            threshold: float, mask_index: torch.Tensor | None = None, fired: torch.Tensor | None = None,
            residual: torch.Tensor | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x (n_embd,) float32, mask (n_hot,) bool, or (n_ff,) bool with mask_index (n_hot,) int64 the hot
    neurons (row i's mask is mask[mask_index[i]]), or None (all candidates) -> (out (n_embd,) float32, fired: 0-dim
    int64, the number of neurons with a != 0). `fired` given: the count is added to it (in place) and it is
    returned; `residual` (n_embd,) given: residual += scale * out in place, and it is the out returned."""
    if mask is not None and mask_index is not None:
        mask = mask[mask_index]
    g = matvec(gate, x[None])[0]
    fire = _fires(g, mask, threshold)
    index = torch.nonzero(fire).flatten()
    h = g[index] * matvec(take_rows(up, index), x[None])[0]  # S2: up rows of the neurons that fired only
    live = h != 0
    index, h = index[live], h[live]  # S3: down_t rows where h != 0 only
    out = torch.zeros(down_t.cols, dtype=torch.float32, device=x.device)
    for start, stop, weight in _chunks(down_t, index):
        out += h[start:stop] @ weight
    out = _in_element_order(down_t, out)
    count = fire.sum()
    if fired is not None:
        count = fired.add_(count)
    if residual is not None:
        out = residual.add_(out, alpha=scale)
    return out, count


def hidden_dense(gate: DeviceMatrix, up: DeviceMatrix, x: torch.Tensor, mask: torch.Tensor | None,
                 threshold: float) -> torch.Tensor:
    """T tokens: x (T, n_embd) float32, mask (T, n_hot) bool or None -> h (T, n_hot) float32 (0 where a == 0)."""
    g = matvec(gate, x)
    return torch.where(_fires(g, mask, threshold), g, 0.0) * matvec(up, x)


def down_t_product(down_t: DeviceMatrix, hidden: torch.Tensor) -> torch.Tensor:
    """hidden (T, n_hot) float32 -> (T, n_embd) float32 = hidden @ down_t."""
    out = torch.zeros((hidden.shape[0], down_t.cols), dtype=torch.float32, device=hidden.device)
    for start, stop, weight in _chunks(down_t):
        out += hidden[:, start:stop] @ weight
    return _in_element_order(down_t, out)


def _fires(g: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """bool, g's shape: where FATReLU(g) != 0 and the mask allows."""
    fire = (g >= threshold) & (g != 0)
    return fire if mask is None else fire & mask


def _in_stored_order(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) in element order -> its columns in the order of `_chunks(m)`'s rows."""
    columns = stored_columns(m)
    return x if columns is None else x[:, columns]


def _in_element_order(m: DeviceMatrix, y: torch.Tensor) -> torch.Tensor:
    """y (.., cols) whose columns follow `_chunks(m)`'s rows -> the same in element order."""
    columns = stored_columns(m)
    if columns is None:
        return y
    out = torch.empty_like(y)
    out[..., columns] = y
    return out


def _chunks(m: DeviceMatrix, index: torch.Tensor | None = None):
    """(start, stop, float32 rows) covering m's rows (or the rows index[start:stop]), CHUNK_ELEMENTS at most each,
    their columns in m's stored order (`weights.stored_columns`: the vectors they meet are permuted instead)."""
    count = m.rows if index is None else int(index.shape[0])
    step = max(1, CHUNK_ELEMENTS // max(1, m.cols))
    for start in range(0, count, step):
        stop = min(start + step, count)
        if index is None:
            yield start, stop, dequantize_rows(m, start, stop, element_order=False)
        else:
            yield start, stop, dequantize_rows(take_rows(m, index[start:stop]), element_order=False)
