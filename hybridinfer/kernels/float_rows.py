"""numba kernels over float weights (F32; F16 as int16 bits, BF16 as uint16 bits, widened by
`simd_half.as_float32`): the dense/gathered dot products and the sparse down projection (S3), computed in float32.
`dispatch.py` picks them by format; reference twins: `reference.py`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .row_tiles import OPTIONS
from .simd_half import as_float32


@njit(parallel=True, **OPTIONS)
def float_dot_rows(data, x, dense, rows, out):
    """out[t, k] = data[r_k] . x[t] with r_k = k (dense) or rows[k]. Eight rows at a time share each load of x
    (float32: as many bytes as an F32 row, twice an F16 one, and for long rows no longer in L1) and give the
    memory eight streams in flight (docs/cpu-decoding.md, "Kernel design choices")."""
    count = data.shape[0] if dense else rows.shape[0]
    last = count - 1
    for group in prange((count + 7) // 8):
        k = 8 * np.int64(group)
        k1, k2, k3 = min(k + 1, last), min(k + 2, last), min(k + 3, last)  # past the end: repeats of the last row
        k4, k5, k6, k7 = min(k + 4, last), min(k + 5, last), min(k + 6, last), min(k + 7, last)
        r0 = data[k] if dense else data[rows[k]]
        r1 = data[k1] if dense else data[rows[k1]]
        r2 = data[k2] if dense else data[rows[k2]]
        r3 = data[k3] if dense else data[rows[k3]]
        r4 = data[k4] if dense else data[rows[k4]]
        r5 = data[k5] if dense else data[rows[k5]]
        r6 = data[k6] if dense else data[rows[k6]]
        r7 = data[k7] if dense else data[rows[k7]]
        for t in range(x.shape[0]):
            xt = x[t]
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for j in range(xt.shape[0]):
                v = xt[j]
                a0 += as_float32(r0[j]) * v
                a1 += as_float32(r1[j]) * v
                a2 += as_float32(r2[j]) * v
                a3 += as_float32(r3[j]) * v
                a4 += as_float32(r4[j]) * v
                a5 += as_float32(r5[j]) * v
                a6 += as_float32(r6[j]) * v
                a7 += as_float32(r7[j]) * v
            out[t, k], out[t, k1], out[t, k2], out[t, k3] = a0, a1, a2, a3
            out[t, k4], out[t, k5], out[t, k6], out[t, k7] = a4, a5, a6, a7


@njit(parallel=True, **OPTIONS)
def float_accumulate(data, rows, coeffs, out, chunks):
    """out[:] = sum_k coeffs[k] * data[rows[k], :], columns split into `chunks` ranges of whole 64-byte lines.
    Four rows at a time: four streams in flight and a quarter of the loads and stores of `out`."""
    cols = out.shape[0]
    active = np.nonzero(coeffs)[0]
    count = active.shape[0]
    for chunk in prange(chunks):
        c = np.int64(chunk)
        lo = min(cols, (c * cols // chunks + 15) // 16 * 16)
        hi = cols if c == chunks - 1 else min(cols, ((c + 1) * cols // chunks + 15) // 16 * 16)
        target = out[lo:hi]  # slices indexed from 0: no negative-index handling, so the loops vectorize
        for j in range(target.shape[0]):
            target[j] = 0.0
        for i in range(0, count, 4):
            i1, i2, i3 = min(i + 1, count - 1), min(i + 2, count - 1), min(i + 3, count - 1)
            a0 = np.float32(coeffs[active[i]])  # past the end: the last row again, with coefficient 0
            a1 = np.float32(coeffs[active[i1]]) if i + 1 < count else np.float32(0.0)
            a2 = np.float32(coeffs[active[i2]]) if i + 2 < count else np.float32(0.0)
            a3 = np.float32(coeffs[active[i3]]) if i + 3 < count else np.float32(0.0)
            s0, s1 = data[rows[active[i]]][lo:hi], data[rows[active[i1]]][lo:hi]
            s2, s3 = data[rows[active[i2]]][lo:hi], data[rows[active[i3]]][lo:hi]
            for j in range(target.shape[0]):
                target[j] += (a0 * as_float32(s0[j]) + a1 * as_float32(s1[j])) + \
                    (a2 * as_float32(s2[j]) + a3 * as_float32(s3[j]))
