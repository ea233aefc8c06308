"""numba CPU kernels for one token's sparse FFN (float32 weights), parallel and releasing the GIL.

The decomposition follows the ProSparse/PowerInfer operators:
  gather_matvec  rows of gate (or up) for a set of neurons            (predicted-active gate rows)
  s2_up          up rows only where the activation passed             (S2: skips up rows of inactive neurons)
  s3_down        sum of h_i * down_t[i] over active neurons           (S3: the down projection, transposed)
`reference.py` holds the plain numpy twin of each; tests compare them on fresh random inputs.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_OPTIONS = dict(parallel=True, nogil=True, fastmath=True, cache=True)


@njit(**_OPTIONS)
def gather_matvec(weight, x, rows, out):
    """out[k] = weight[rows[k]] . x   weight (n, d) float32, x (d,), rows (k,) int64, out (k,)."""
    for k in prange(rows.shape[0]):
        row = weight[rows[k]]
        acc = np.float32(0.0)
        for j in range(x.shape[0]):
            acc += row[j] * x[j]
        out[k] = acc


def s3_down(down_t, rows, hidden, out):
    """out[:] = sum_k hidden[k] * down_t[rows[k], :]   down_t (n_ff, d); the output columns are split
    between threads so each thread reads every selected row's slice once and writes a disjoint range."""
    _s3_down(down_t, rows, hidden, out, max(1, min(numba.get_num_threads() * 4, out.shape[0] // 64)))


@njit(**_OPTIONS)
def _s3_down(down_t, rows, hidden, out, n_chunks):
    d = out.shape[0]
    for c in prange(n_chunks):
        lo = c * d // n_chunks
        hi = (c + 1) * d // n_chunks
        for j in range(lo, hi):
            out[j] = 0.0
        for k in range(rows.shape[0]):
            h = hidden[k]
            if h == 0.0:
                continue
            row = down_t[rows[k]]
            for j in range(lo, hi):
                out[j] += h * row[j]


def sparse_ffn(gate: np.ndarray, up: np.ndarray, down_t: np.ndarray, x: np.ndarray, rows: np.ndarray,
               threshold: float, out: np.ndarray) -> int:
    """One token's FFN over neurons `rows` (predicted or all): gate rows, FATReLU, S2 up rows where the
    activation passed, S3 down. Writes (d,) into `out`; returns how many neurons were truly active."""
    gate_values = np.empty(rows.shape[0], dtype=np.float32)
    gather_matvec(gate, x, rows, gate_values)
    passed = gate_values >= threshold
    active = rows[passed]
    up_values = np.empty(active.shape[0], dtype=np.float32)
    gather_matvec(up, x, active, up_values)
    s3_down(down_t, active, gate_values[passed] * up_values, out)
    return int(active.shape[0])
