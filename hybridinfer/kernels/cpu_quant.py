"""numba CPU kernels over packed weights (`packed.py`): dense and sparse, every supported GGUF format.

    matvec(W, x, out)                      out = W @ x                                  dense
    matvec_rows(W, x, rows, out)           out[k] = W[rows[k]] @ x                      predicted-active gate/up rows
    accumulate_rows(W_t, rows, c, out)     out = sum_k c[k] * W_t[rows[k], :]           S3 over down_t (row = neuron)
    matmul(W, X, out)                      out = X @ W.T   X (T, cols), out (T, rows)   prefill, each row read once

Float formats (F32, F16, BF16) are computed in float32. Quantized formats (Q8_0, Q4_x, Q5_x, K) by default use
activations quantized to int8 as llama.cpp does (x^ = dx * round(x / dx), dx = max|x|/127 over each 32-block, its
q8_0, or for the K-quants over each 256 elements, its q8_K: `SCALE_GROUPS`), with exact integer dot products per
block (AVX-512 VNNI) and float32 scaling: the result is W @ x^ to float32 rounding, so |out - W @ x| <=
||W_row|| * ||x - x^|| <= int8_error_bound(code) * ||W_row|| * ||x|| (in practice ~5e-3 of the outputs' RMS). `float_activations=True` keeps activations in float32 (about half the speed).
accumulate_rows likewise quantizes its coefficients to int8 per block and batch of 8 rows (`cpu_accumulate_int8.py`,
~5e-3 relative), or with `float_activations=True` computes in float32.

x may be a float32 array or `prepare(x)`'s result, so gate and up can share one preparation. Every kernel
writes into a caller-provided float32 `out`; rows are int32/int64 index arrays. Parallel over output rows (or,
for accumulate_rows, over shares of the rows; F32/F16/BF16 over column ranges), releasing the GIL. Reference
twins: `reference.py`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from ..model_file.weight_formats import FORMATS
from .dispatch import ALL_ROWS, accumulate, product
from .formats import FORMAT_OF_CODE
from .variants import specialization
from .packed import BLOCK, TILE, PackedMatrix, aligned_empty

# 32-blocks per int8 activation scale, by the code of the matrix the activations feed: one scale per 256 elements
# for the K-quants (llama.cpp's q8_K), one per 32-block for every other format (its q8_0)
SCALE_GROUPS = tuple(8 if FORMAT_OF_CODE[code].k_quant else 1 for code in range(len(FORMAT_OF_CODE)))
INT8_ERROR_BOUND = 32 ** 0.5 / 254  # ||x - x^|| <= this * ||x||: each element is off by at most max|x_block| / 254


def int8_error_bound(code: int) -> float:
    """INT8_ERROR_BOUND for activations scaled over SCALE_GROUPS[code] blocks (each element off by at most the
    group's max|x| / 254)."""
    return (32 * SCALE_GROUPS[code]) ** 0.5 / 254


class Activations(NamedTuple):
    """T tokens' activations, prepared once for any number of matrices with the same column count (a named
    tuple, so that numba code takes it as one argument)."""

    x: np.ndarray  # (T, cols) float32, natural order (float formats)
    xp: np.ndarray  # (T, cols) float32, packed lane order (float-activation quantized path; see packed.py)
    xsum: np.ndarray  # (T, nb) float32: sum of each 32-block of x
    qx: np.ndarray  # (T, cols) int8, packed byte order: round(x / dx) per block (int8 path)
    dx: np.ndarray  # (T, nb) float32: max |x| / 127 per block
    qsum: np.ndarray  # (T, nb) int32: sum of each block's qx

    @property
    def tokens(self) -> int:
        return self.x.shape[0]

    @property
    def cols(self) -> int:
        return self.x.shape[1]


def prepare(x: np.ndarray, blocks: bool = True, code: int = 0) -> Activations:
    """Activations of one token (cols,) or T tokens (T, cols), float32, for matrices of format `code` (its int8
    scales: `SCALE_GROUPS`). `blocks=False` skips what only the quantized formats read (packed order, int8
    quantization): enough for F32/F16/BF16 matrices."""
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    act = activation_buffers(x2.shape[0], x2.shape[1], blocks, x=x2)
    if act.qx.shape[1]:
        prepare_blocks(x2, act.xp, act.xsum, act.qx, act.dx, act.qsum, SCALE_GROUPS[code])
    return act


def activation_buffers(tokens: int, cols: int, blocks: bool = True, x: np.ndarray | None = None) -> Activations:
    """Empty Activations for `tokens` x `cols` (x itself when given), to be filled by `prepare_into`."""
    nb = cols // BLOCK if blocks and cols % BLOCK == 0 else 0
    x = aligned_empty((tokens, cols), np.float32) if x is None else x
    xp, qx = aligned_empty((tokens, nb * BLOCK), np.float32), aligned_empty((tokens, nb * BLOCK), np.int8)
    xsum, dx = aligned_empty((tokens, nb), np.float32), aligned_empty((tokens, nb), np.float32)
    return Activations(x, xp, xsum, qx, dx, aligned_empty((tokens, nb), np.int32))


def prepare_into(act: Activations, code: int = 0) -> Activations:
    """Recompute the block data of `act` from its `x` (which the caller has just written) for matrices of format
    `code`: `prepare` without allocating, for buffers made once by `activation_buffers`."""
    if act.qx.shape[1]:
        prepare_blocks(act.x, act.xp, act.xsum, act.qx, act.dx, act.qsum, SCALE_GROUPS[code])
    return act


# ---- public kernels --------------------------------------------------------------------------------------

def matvec(packed: PackedMatrix, x, out: np.ndarray, float_activations: bool = False) -> None:
    """out (rows,) = W @ x."""
    _dot_rows(packed, _prepared(x, packed, 1), None, _checked(out, (packed.rows,)).reshape(1, -1),
              float_activations)


def matvec_rows(packed: PackedMatrix, x, rows: np.ndarray, out: np.ndarray, float_activations: bool = False) -> None:
    """out (k,) [i] = W[rows[i]] @ x."""
    rows = _checked_rows(rows, packed.rows)
    _dot_rows(packed, _prepared(x, packed, 1), rows, _checked(out, (rows.shape[0],)).reshape(1, -1),
              float_activations)


def matmul(packed: PackedMatrix, x, out: np.ndarray, float_activations: bool = False) -> None:
    """out (T, rows) = X @ W.T for X (T, cols): each weight row is read from memory once for all T tokens."""
    act = _prepared(x, packed, None)
    _dot_rows(packed, act, None, _checked(out, (act.tokens, packed.rows)), float_activations)


def matmul_rows(packed: PackedMatrix, x, rows: np.ndarray, out: np.ndarray, float_activations: bool = False) -> None:
    """out (T, k) [t, i] = W[rows[i]] . X[t] for X (T, cols): each gathered row is read once for all T tokens."""
    rows = _checked_rows(rows, packed.rows)
    act = _prepared(x, packed, None)
    _dot_rows(packed, act, rows, _checked(out, (act.tokens, rows.shape[0])), float_activations)


def accumulate_rows(packed_t: PackedMatrix, rows: np.ndarray, coeffs: np.ndarray, out: np.ndarray,
                    float_activations: bool = False) -> None:
    """out (cols,) = sum_k coeffs[k] * W_t[rows[k], :]; rows with a zero coefficient are not read. Quantized
    formats use int8 coefficients per block and batch of rows (`cpu_accumulate_int8.py`), float32 ones with
    `float_activations`; not the K-quants (their transposes are in 32-block formats)."""
    if FORMATS[packed_t.qtype].k_quant:
        raise ValueError(f"accumulate_rows reads 32-block formats; a {packed_t.qtype.name} weight's transpose is "
                         f"made as {FORMATS[packed_t.qtype].transpose_type.name} (`requantize.transpose_quantized`)")
    rows = _checked_rows(rows, packed_t.rows)
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
    if coeffs.shape != rows.shape:
        raise ValueError(f"{coeffs.shape[0]} coefficients for {rows.shape[0]} rows")
    out = _checked(out, (packed_t.cols,))
    chunks = max(1, numba.get_num_threads())
    _accumulate_kernel(packed_t.code, bool(float_activations))(packed_t.raw, packed_t.cols, rows, coeffs, out, chunks)


def _prepared(x, packed: PackedMatrix, tokens) -> Activations:
    act = x if isinstance(x, Activations) else prepare(x, blocks=packed.quantized, code=packed.code)
    if act.cols != packed.cols:
        raise ValueError(f"activations have {act.cols} columns, the matrix {packed.cols}")
    if tokens is not None and act.tokens != tokens:
        raise ValueError(f"expected {tokens} token(s) of activations, got {act.tokens}")
    if packed.quantized and act.qx.shape[1] != packed.cols:
        raise ValueError("these activations were prepared with blocks=False; prepare them with blocks=True")
    return act


def _checked(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The caller's output buffer, which the kernels write in place: float32, C-contiguous, of `shape`."""
    if out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous float32 array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def _checked_rows(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ValueError("rows must be a 1-D integer array")
    rows = rows if rows.dtype in (np.int32, np.int64) else rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):  # the kernels do not check indices
        raise IndexError(f"row indices must lie in [0, {n})")
    return np.ascontiguousarray(rows)


def _dot_rows(packed: PackedMatrix, act: Activations, rows, out: np.ndarray, float_activations: bool) -> None:
    if rows is None:
        _dense_kernel(packed.code, bool(float_activations))(packed.raw, act, out)
    else:
        _rows_kernel(packed.code, bool(float_activations))(packed.raw, act, rows, out)


# Entry points from Python, one per format and activation type (`dispatch.py`): numba functions that call the
# kernels exactly as the blocks of `cpu_layer` do, so that both share one compiled kernel.

@functools.cache
def _dense_kernel(code: int, float_activations: bool):
    @specialization(code, float_activations)
    def dense_product(raw, act, out):
        product(code, raw, act, ALL_ROWS, True, float_activations, out)
    return dense_product


@functools.cache
def _rows_kernel(code: int, float_activations: bool):
    @specialization(code, float_activations)
    def rows_product(raw, act, rows, out):
        product(code, raw, act, rows, False, float_activations, out)
    return rows_product


@functools.cache
def _accumulate_kernel(code: int, float_activations: bool):
    @specialization(code, float_activations)
    def accumulate_product(raw, cols, rows, coeffs, out, chunks):
        accumulate(code, raw, cols, rows, coeffs, out, chunks, float_activations)
    return accumulate_product


# ---- activation preparation ------------------------------------------------------------------------------

@njit(nogil=True, cache=True)  # no fastmath: amax / 127 and 1 / scale rounded exactly as the reference twin does
def prepare_blocks(x, xp, xsum, qx, dx, qsum, group):
    """Per token and 32-block: packed-order copy, sum, int8 quantization and its sum. One int8 scale, max|x|/127,
    serves `group` consecutive blocks (`SCALE_GROUPS`: 1 as llama.cpp's q8_0, 8 as its q8_K)."""
    nb = xsum.shape[1]
    for t in range(x.shape[0]):
        for first in range(0, nb, group):
            last = min(first + group, nb)
            amax = np.float32(0.0)
            for e in range(first * BLOCK, last * BLOCK):
                amax = max(amax, abs(x[t, e]))
            scale = amax / np.float32(127.0)
            inverse = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            for block in range(first, last):
                start = block - block % TILE
                width = min(TILE, nb - start)
                tile, b = start * BLOCK, block - start
                total = np.float32(0.0)
                total_q = 0
                for e in range(BLOCK):
                    v = x[t, block * BLOCK + e]
                    total += v
                    xp[t, tile + e * width + b] = v  # lane order: (g, j) = divmod(e, 4), then b
                    q = np.int32(np.rint(v * inverse))
                    total_q += q
                    qx[t, tile + ((e // 4) * width + b) * 4 + e % 4] = q  # byte order
                xsum[t, block] = total
                dx[t, block] = scale
                qsum[t, block] = total_q
