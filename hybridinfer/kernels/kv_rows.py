"""One position's key or value row of the CPU KV cache in its storage type (`runtime/kv_types.py`): written from
float32, and read inside the attention loop a row at a time, converted as it is read (the cache is never copied
to float32). Callable from numba code only; each resolves by the row's dtype to that type's code, so that a run
compiles only its cache types':

  float32   copied, read as is
  int16     float16 bits: written by `simd_half.half_bits`, read by `simd_half.as_float32`
  int8      Q8_0: per 32-value block d = max|x| / 127 (kept as float16 bits in `scales`) and q = roundf(x / d),
            bit for bit as ggml's quantize_row_q8_0_ref and gguf-py's Q8_0 (the reference twin:
            `reference.kv_encode`); read as d * q

row (head_dim,); scales (head_dim / 32,) int16 for Q8_0, (0,) for the others.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .simd_half import as_float32, half_bits

Q8_BLOCK = 32


def store_row(values, row, scales):
    """row (and scales) = values (head_dim,) float32 in the row's type."""
    raise NotImplementedError("kv_rows.store_row runs inside numba code")


def dot_row(query, row, scales):
    """query (head_dim,) float32 . the row's values, in float32."""
    raise NotImplementedError("kv_rows.dot_row runs inside numba code")


def add_row(target, weight, row, scales):
    """target (head_dim,) float32 += weight * the row's values."""
    raise NotImplementedError("kv_rows.add_row runs inside numba code")


@overload(store_row, jit_options=dict(nogil=True))  # no fastmath: Q8_0's d and 1 / d rounded exactly as ggml's
def _store_row(values, row, scales):
    if row.dtype == types.float32:
        def store(values, row, scales):
            row[:] = values
    elif row.dtype == types.int16:
        def store(values, row, scales):
            for d in range(row.shape[0]):
                row[d] = half_bits(values[d])
    elif row.dtype == types.int8:
        def store(values, row, scales):
            for b in range(scales.shape[0]):
                block = values[b * Q8_BLOCK:(b + 1) * Q8_BLOCK]
                amax = np.float32(0.0)
                for j in range(Q8_BLOCK):
                    amax = max(amax, abs(block[j]))
                scale = amax / np.float32(127.0)
                inverse = np.float32(1.0) / scale if scale != 0 else np.float32(0.0)
                for j in range(Q8_BLOCK):
                    row[b * Q8_BLOCK + j] = _roundf(block[j] * inverse)
                scales[b] = half_bits(scale)
    else:
        return None
    return store


@overload(dot_row, jit_options=dict(nogil=True, fastmath=True))
def _dot_row(query, row, scales):
    if row.dtype == types.int8:
        def dot(query, row, scales):
            total = np.float32(0.0)
            # one loop over the row, each value's scale looked up (d >> 5 = its block): it vectorizes, where a
            # loop per block ran ~6x slower
            for d in range(row.shape[0]):
                total += query[d] * np.float32(row[d]) * as_float32(scales[d >> 5])
            return total
    else:
        def dot(query, row, scales):
            total = np.float32(0.0)
            for d in range(row.shape[0]):
                total += query[d] * as_float32(row[d])
            return total
    return dot


@overload(add_row, jit_options=dict(nogil=True, fastmath=True))
def _add_row(target, weight, row, scales):
    if row.dtype == types.int8:
        def add(target, weight, row, scales):
            for d in range(row.shape[0]):  # as dot_row's
                target[d] += weight * as_float32(scales[d >> 5]) * np.float32(row[d])
    else:
        def add(target, weight, row, scales):
            for d in range(row.shape[0]):
                target[d] += weight * as_float32(row[d])
    return add


@njit(inline="always", nogil=True, cache=True)
def _roundf(x):
    """C's roundf (halves away from zero) as int8, computed as gguf-py's np_roundf does."""
    a = abs(x)
    floored = np.float32(math.floor(a))
    rounded = floored + np.float32(math.floor(np.float32(2.0) * (a - floored)))
    return np.int8(rounded if x >= 0 else -rounded)
