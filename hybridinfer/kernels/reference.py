"""Plain numpy twins of the sparse FFN kernels in `cpu_sparse.py`: what each kernel must compute."""

from __future__ import annotations

import numpy as np


def gather_matvec(weight: np.ndarray, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """weight (n, d), x (d,), rows (k,) -> (k,): weight[rows] @ x."""
    return weight[rows] @ x


def fatrelu(values: np.ndarray, threshold: float) -> np.ndarray:
    """v if v >= threshold else 0 (threshold 0 is ReLU)."""
    return np.where(values >= threshold, values, np.float32(0)).astype(np.float32)


def sparse_down(down_t: np.ndarray, rows: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """down_t (n_ff, d) holds neuron i's output vector in row i; -> (d,) = sum_k hidden[k] * down_t[rows[k]]."""
    return hidden @ down_t[rows]


def sparse_ffn(gate: np.ndarray, up: np.ndarray, down_t: np.ndarray, x: np.ndarray, rows: np.ndarray,
               threshold: float) -> np.ndarray:
    """The FFN of one token over the neurons `rows` only: sum over i in rows of
    FATReLU(gate_i . x) * (up_i . x) * down_t[i]."""
    hidden = fatrelu(gate[rows] @ x, threshold) * (up[rows] @ x)
    return hidden @ down_t[rows]
