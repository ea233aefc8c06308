"""numba CPU kernels over packed weights (`packed.py`): dense and sparse, every supported GGUF format.

    matvec(W, x, out)                      out = W @ x                                  dense
    matvec_rows(W, x, rows, out)           out[k] = W[rows[k]] @ x                      predicted-active gate/up rows
    accumulate_rows(W_t, rows, c, out)     out = sum_k c[k] * W_t[rows[k], :]           S3 over down_t (row = neuron)
    matmul(W, X, out)                      out = X @ W.T   X (T, cols), out (T, rows)   prefill, each row read once

Float formats (F32, F16, BF16) are computed in float32. Quantized formats (Q8_0, Q4_0, Q4_1) by default use
activations quantized to int8 per 32-block, as llama.cpp does (x^ = dx * round(x / dx), dx = max|x|/127), with
exact integer dot products per block (AVX-512 VNNI) and float32 scaling: the result is W @ x^ to float32
rounding, so |out - W @ x| <= ||W_row|| * ||x - x^|| <= INT8_ERROR_BOUND * ||W_row|| * ||x|| (in practice
~5e-3 of the outputs' RMS). `float_activations=True` keeps activations in float32 (about half the speed).
accumulate_rows likewise quantizes its coefficients to int8 per block and batch of 8 rows (`cpu_accumulate_int8.py`,
~5e-3 relative), or with `float_activations=True` computes in float32.

x may be a float32 array or `prepare(x)`'s result, so gate and up can share one preparation. Every kernel
writes into a caller-provided float32 `out`; rows are int32/int64 index arrays. Parallel over output rows (or,
for accumulate_rows, over shares of the rows; F32/F16/BF16 over column ranges), releasing the GIL. Reference
twins: `reference.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .cpu_accumulate_int8 import quant_accumulate_int8
from .formats import Q4_1, Q8_0
from .packed import BLOCK, TILE, PackedMatrix, aligned_empty
from .row_tiles import OPTIONS, prefetch_shares, share_bytes, unit_offsets
from .simd import (add, add_i32, as_float32, byte_planes_as_f32, dot_u8s8, expand4, flip_sign_bits, fma, high_nibbles,
                   hsum, load_bytes, load_f16_bytes, load_f32, load_i32, load_s8_as_f32, low_nibbles, mul,
                   nibble_planes_as_f32, nibble_table, scale_i32, splat_f32, store_f32, to_f32, zeros_f32, zeros_i32)

INT8_ERROR_BOUND = 32 ** 0.5 / 254  # ||x - x^|| <= this * ||x||: each element is off by at most max|x_block| / 254
ROW_BATCH = 8  # accumulate_rows: rows summed per pass over the output, the partial sums kept in registers


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


def prepare(x: np.ndarray, blocks: bool = True) -> Activations:
    """Activations of one token (cols,) or T tokens (T, cols), float32. `blocks=False` skips what only the
    quantized formats read (packed order, int8 quantization): enough for F32/F16/BF16 matrices."""
    x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
    act = activation_buffers(x2.shape[0], x2.shape[1], blocks, x=x2)
    if act.qx.shape[1]:
        _prepare_blocks(x2, act.xp, act.xsum, act.qx, act.dx, act.qsum)
    return act


def activation_buffers(tokens: int, cols: int, blocks: bool = True, x: np.ndarray | None = None) -> Activations:
    """Empty Activations for `tokens` x `cols` (x itself when given), to be filled by `prepare_into`."""
    nb = cols // BLOCK if blocks and cols % BLOCK == 0 else 0
    x = aligned_empty((tokens, cols), np.float32) if x is None else x
    xp, qx = aligned_empty((tokens, nb * BLOCK), np.float32), aligned_empty((tokens, nb * BLOCK), np.int8)
    xsum, dx = aligned_empty((tokens, nb), np.float32), aligned_empty((tokens, nb), np.float32)
    return Activations(x, xp, xsum, qx, dx, aligned_empty((tokens, nb), np.int32))


def prepare_into(act: Activations) -> Activations:
    """Recompute the block data of `act` from its `x` (which the caller has just written): `prepare` without
    allocating, for buffers made once by `activation_buffers`."""
    if act.qx.shape[1]:
        _prepare_blocks(act.x, act.xp, act.xsum, act.qx, act.dx, act.qsum)
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


def accumulate_rows(packed_t: PackedMatrix, rows: np.ndarray, coeffs: np.ndarray, out: np.ndarray,
                    float_activations: bool = False) -> None:
    """out (cols,) = sum_k coeffs[k] * W_t[rows[k], :]; rows with a zero coefficient are not read. Quantized
    formats use int8 coefficients per block and batch of rows (`cpu_accumulate_int8.py`), float32 ones with
    `float_activations`."""
    rows = _checked_rows(rows, packed_t.rows)
    coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
    if coeffs.shape != rows.shape:
        raise ValueError(f"{coeffs.shape[0]} coefficients for {rows.shape[0]} rows")
    out = _checked(out, (packed_t.cols,))
    chunks = max(1, numba.get_num_threads())
    if packed_t.quantized and not float_activations:
        quant_accumulate_int8(packed_t.code, packed_t.data, packed_t.n_blocks, rows, coeffs, out, chunks)
    elif packed_t.quantized:
        _quant_accumulate(packed_t.code, packed_t.data, packed_t.n_blocks, rows, coeffs, out, chunks)
    else:
        _float_accumulate(packed_t.data, rows, coeffs, out, chunks)


def _prepared(x, packed: PackedMatrix, tokens) -> Activations:
    act = x if isinstance(x, Activations) else prepare(x, blocks=packed.quantized)
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
    dense = rows is None
    index = _NO_ROWS if dense else rows
    if packed.quantized:
        _quant_dot_rows(packed.code, float_activations, packed.data, packed.n_blocks, act.xp, act.xsum, act.qx,
                        act.dx, act.qsum, dense, index, out)
    else:
        _float_dot_rows(packed.data, act.x, dense, index, out)


_NO_ROWS = np.zeros(0, dtype=np.int64)


# ---- activation preparation ------------------------------------------------------------------------------

@njit(nogil=True, cache=True)  # no fastmath: amax / 127 and 1 / scale rounded exactly as the reference twin does
def _prepare_blocks(x, xp, xsum, qx, dx, qsum):
    """Per token and 32-block: packed-order copy, sum, int8 quantization (scale max|x|/127) and its sum."""
    nb = xsum.shape[1]
    for t in range(x.shape[0]):
        for block in range(nb):
            start = block - block % TILE
            width = min(TILE, nb - start)
            tile, b = start * BLOCK, block - start
            amax = np.float32(0.0)
            total = np.float32(0.0)
            for e in range(BLOCK):
                v = x[t, block * BLOCK + e]
                total += v
                amax = max(amax, abs(v))
                xp[t, tile + e * width + b] = v  # lane order: (g, j) = divmod(e, 4), then b
            scale = amax / np.float32(127.0)
            inverse = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
            total_q = 0
            for e in range(BLOCK):
                q = np.int32(np.rint(x[t, block * BLOCK + e] * inverse))
                total_q += q
                qx[t, tile + ((e // 4) * width + b) * 4 + e % 4] = q  # byte order
            xsum[t, block] = total
            dx[t, block] = scale
            qsum[t, block] = total_q


# ---- float formats: F32, F16 (int16 bits), BF16 (uint16 bits) --------------------------------------------

@njit(parallel=True, **OPTIONS)
def _float_dot_rows(data, x, dense, rows, out):
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
def _float_accumulate(data, rows, coeffs, out, chunks):
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


# ---- quantized formats: Q8_0, Q4_0, Q4_1 in the tiled layout ---------------------------------------------
# A row is handled a tile (16 blocks) at a time: whole tiles with the constant width TILE, so that every masked
# load folds into a plain one, then the last partial tile. Each tile helper handles one format, without
# branches: branches around array arguments make numba emit reference counting calls inside the hot loop.
# `kind`: the format's code (`formats.py`).

@njit(parallel=True, **OPTIONS)
def _quant_dot_rows(kind, float_activations, data, nb, xp, xsum, qx, dx, qsum, dense, rows, out):
    """out[t, k] = data[r_k] . x[t] with r_k = k (dense) or rows[k]; int8 activations unless `float_activations`.
    Four rows at a time (four streams in flight: random rows then run at the speed of a plain read of them, 30-40%
    faster than one at a time); for random rows, the next four rows are prefetched a share per tile. Everything is
    addressed as flat array + offset: a row view per row would cost reference counting."""
    count = data.shape[0] if dense else rows.shape[0]
    row_bytes, cols, last = data.shape[1], nb * BLOCK, count - 1
    w = data.reshape(-1)
    minimums = 1 if kind == Q4_1 else 0
    ops = (minimums, nibble_table(8 - 8 * minimums), xp.reshape(-1), xsum.reshape(-1), qx.reshape(-1),
           dx.reshape(-1), qsum.reshape(-1))
    share = share_bytes(row_bytes, nb)
    groups = (count + 3) // 4
    # dense: rows a quarter of the matrix apart, four forward streams (four adjacent rows at a time halve the speed:
    # the hardware prefetcher takes them for random reads); random rows: four consecutive entries of `rows`
    step = groups if dense else 1
    for group in prange(groups):
        k = np.int64(group) * (1 if dense else 4)  # prange's index may be unsigned: with int64 offsets, floats
        k1, k2, k3 = min(k + step, last), min(k + 2 * step, last), min(k + 3 * step, last)  # past the end: last row
        wo = (_row_offset(rows, dense, k, row_bytes), _row_offset(rows, dense, k1, row_bytes),
              _row_offset(rows, dense, k2, row_bytes), _row_offset(rows, dense, k3, row_bytes))
        ahead = (_ahead_offset(rows, dense, k + 4, count, row_bytes),
                 _ahead_offset(rows, dense, k + 5, count, row_bytes),
                 _ahead_offset(rows, dense, k + 6, count, row_bytes),
                 _ahead_offset(rows, dense, k + 7, count, row_bytes))
        for t in range(out.shape[0]):
            if t:
                ahead = (np.int64(-1), np.int64(-1), np.int64(-1), np.int64(-1))  # fetched with the first token
            if kind == Q8_0 and not float_activations:
                d0, d1, d2, d3 = _four_rows(_q8_int8_tile, w, wo, nb, ops, t * cols, t * nb, ahead, share)
            elif kind == Q8_0:
                d0, d1, d2, d3 = _four_rows(_q8_float_tile, w, wo, nb, ops, t * cols, t * nb, ahead, share)
            elif not float_activations:
                d0, d1, d2, d3 = _four_rows(_q4_int8_tile, w, wo, nb, ops, t * cols, t * nb, ahead, share)
            else:
                d0, d1, d2, d3 = _four_rows(_q4_float_tile, w, wo, nb, ops, t * cols, t * nb, ahead, share)
            out[t, k], out[t, k1], out[t, k2], out[t, k3] = d0, d1, d2, d3


@njit(inline="always", **OPTIONS)
def _row_offset(rows, dense, k, row_bytes):
    return (k if dense else np.int64(rows[k])) * row_bytes


@njit(inline="always", **OPTIONS)
def _ahead_offset(rows, dense, k, count, row_bytes):
    """Offset of random row k, to prefetch; -1 (nothing) for dense rows, which the hardware prefetches, and past
    the end."""
    return np.int64(rows[k]) * row_bytes if not dense and k < count else np.int64(-1)


@njit(inline="always", **OPTIONS)
def _four_rows(tile, w, wo, nb, ops, xo, bo, ahead, share):
    """The dots of the four packed rows at w[wo[i]:] with one token's activations (at xo in xp/qx, at bo in the
    per-block arrays of `ops`), `tile` adding up one tile of one row. Each tile also prefetches a share of the rows
    at w[ahead[i]:] (those >= 0): spread over the rows, the prefetches keep the memory busy without a burst of
    them stalling the loads these rows need."""
    full = nb - nb % TILE
    t0, t1, t2, t3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    for start in range(0, full, TILE):
        prefetch_shares(w, ahead, 4, start, share)
        t0 = tile(w, wo[0], ops, xo, bo, start, TILE, t0)
        t1 = tile(w, wo[1], ops, xo, bo, start, TILE, t1)
        t2 = tile(w, wo[2], ops, xo, bo, start, TILE, t2)
        t3 = tile(w, wo[3], ops, xo, bo, start, TILE, t3)
    if full < nb:
        prefetch_shares(w, ahead, 4, full, share)
        t0 = tile(w, wo[0], ops, xo, bo, full, nb - full, t0)
        t1 = tile(w, wo[1], ops, xo, bo, full, nb - full, t1)
        t2 = tile(w, wo[2], ops, xo, bo, full, nb - full, t2)
        t3 = tile(w, wo[3], ops, xo, bo, full, nb - full, t3)
    return hsum(t0), hsum(t1), hsum(t2), hsum(t3)


@njit(inline="always", **OPTIONS)
def _q8_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """(Every tile helper: w[wo:] one packed row, ops = (minimums, table, xp, xsum, qx, dx, qsum) with the
    activations at xo and the per-block arrays at bo; adds the tile whose first block is `start` to `total`.)
    total + per block b of the tile: d_b dx_b (q_b . qx_b), the dot exact in int32 as (q + 128) . qx - 128 sum(qx).
    Four independent sums: one chain would be bound by vpdpbusd's latency, not its throughput."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4  # bytes per group of 4 elements x `width` blocks
    header, quants = unit_offsets(start, 1, 512)
    o, x = wo + quants, xo + start * 32
    acc0 = dot_u8s8(scale_i32(load_i32(qsum, bo + start, width), -128), flip_sign_bits(load_bytes(w, o, n)),
                    load_bytes(qx, x, n))
    acc1 = dot_u8s8(zeros_i32(), flip_sign_bits(load_bytes(w, o + n, n)), load_bytes(qx, x + n, n))
    acc2 = dot_u8s8(zeros_i32(), flip_sign_bits(load_bytes(w, o + 2 * n, n)), load_bytes(qx, x + 2 * n, n))
    acc3 = dot_u8s8(zeros_i32(), flip_sign_bits(load_bytes(w, o + 3 * n, n)), load_bytes(qx, x + 3 * n, n))
    o, x = o + 4 * n, x + 4 * n
    acc0 = dot_u8s8(acc0, flip_sign_bits(load_bytes(w, o, n)), load_bytes(qx, x, n))
    acc1 = dot_u8s8(acc1, flip_sign_bits(load_bytes(w, o + n, n)), load_bytes(qx, x + n, n))
    acc2 = dot_u8s8(acc2, flip_sign_bits(load_bytes(w, o + 2 * n, n)), load_bytes(qx, x + 2 * n, n))
    acc3 = dot_u8s8(acc3, flip_sign_bits(load_bytes(w, o + 3 * n, n)), load_bytes(qx, x + 3 * n, n))
    acc = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    scale = mul(load_f16_bytes(w, wo + header, width), load_f32(dx, bo + start, width))
    return fma(to_f32(acc), scale, total)


@njit(inline="always", **OPTIONS)
def _q4_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """total + per block: d dx ((q - 8) . qx) for Q4_0 (minimums 0), d dx (q . qx) + m dx sum(qx) for Q4_1."""
    minimums, qx, dx, qsum = ops[0], ops[4], ops[5], ops[6]
    n = width * 4
    block_qsum = load_i32(qsum, bo + start, width)
    acc0, acc1 = scale_i32(block_qsum, 8 * minimums - 8), zeros_i32()
    acc2, acc3 = zeros_i32(), zeros_i32()  # four independent sums (vpdpbusd latency)
    header, quants = unit_offsets(start, 1 - minimums, 256)
    o, x = wo + quants, xo + start * 32
    for g in range(0, 4, 2):  # low nibbles pair with activation group g, high nibbles with group g + 4
        packed = load_bytes(w, o + g * n, n)
        acc0 = dot_u8s8(acc0, low_nibbles(packed), load_bytes(qx, x + g * n, n))
        acc1 = dot_u8s8(acc1, high_nibbles(packed), load_bytes(qx, x + (g + 4) * n, n))
        packed = load_bytes(w, o + (g + 1) * n, n)
        acc2 = dot_u8s8(acc2, low_nibbles(packed), load_bytes(qx, x + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high_nibbles(packed), load_bytes(qx, x + (g + 5) * n, n))
    acc = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    block_dx = load_f32(dx, bo + start, width)
    total = fma(to_f32(acc), mul(load_f16_bytes(w, wo + header, width), block_dx), total)
    minimum = load_f16_bytes(w, wo + header + 32, width * minimums)  # zeros for Q4_0
    return fma(minimum, mul(block_dx, to_f32(block_qsum)), total)


@njit(inline="always", **OPTIONS)
def _q8_float_tile(w, wo, ops, xo, bo, start, width, total):
    """total + the tile's products in float32, one block a lane: the 4 bytes of each 32-bit lane are split into 4
    planes (element 4g + j of every block), each times its activations (lane order), then times d per lane."""
    xp = ops[2]
    n = width * 4
    p0, p1, p2, p3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 1, 512)
    for g in range(8):
        b0, b1, b2, b3 = byte_planes_as_f32(load_bytes(w, wo + quants + g * n, n))
        x = xo + start * 32 + g * n
        p0 = fma(b0, load_f32(xp, x, width), p0)
        p1 = fma(b1, load_f32(xp, x + width, width), p1)
        p2 = fma(b2, load_f32(xp, x + 2 * width, width), p2)
        p3 = fma(b3, load_f32(xp, x + 3 * width, width), p3)
    return fma(add(add(p0, p1), add(p2, p3)), load_f16_bytes(w, wo + header, width), total)


@njit(inline="always", **OPTIONS)
def _q4_float_tile(w, wo, ops, xo, bo, start, width, total):
    """As `_q8_float_tile` for 4-bit quants (8 nibble planes a group, looked up in `table`: q - 8 for Q4_0, q for
    Q4_1), plus m_b sum(x_b) per block for Q4_1."""
    minimums, table, xp, xsum = ops[0], ops[1], ops[2], ops[3]
    n = width * 4
    p0, p1, p2, p3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 1 - minimums, 256)
    for g in range(4):
        s0, s1, s2, s3, s4, s5, s6, s7 = nibble_planes_as_f32(load_bytes(w, wo + quants + g * n, n), table)
        lo, hi = xo + start * 32 + g * n, xo + start * 32 + (g + 4) * n  # low nibbles: group g, high: g + 4
        p0 = fma(s1, load_f32(xp, hi, width), fma(s0, load_f32(xp, lo, width), p0))
        p1 = fma(s3, load_f32(xp, hi + width, width), fma(s2, load_f32(xp, lo + width, width), p1))
        p2 = fma(s5, load_f32(xp, hi + 2 * width, width), fma(s4, load_f32(xp, lo + 2 * width, width), p2))
        p3 = fma(s7, load_f32(xp, hi + 3 * width, width), fma(s6, load_f32(xp, lo + 3 * width, width), p3))
    total = fma(add(add(p0, p1), add(p2, p3)), load_f16_bytes(w, wo + header, width), total)
    minimum = load_f16_bytes(w, wo + header + 32, width * minimums)  # zeros for Q4_0
    return fma(minimum, load_f32(xsum, bo + start, width), total)


@njit(parallel=True, **OPTIONS)
def _quant_accumulate(kind, data, nb, rows, coeffs, out, chunks):
    """out[:] = sum_k coeffs[k] * dequant(data[rows[k]]). Each chunk (thread) takes a share of the rows, whole
    (longer forward streams than column ranges of every row, faster for Q4: docs/cpu-decoding.md), ROW_BATCH at a
    time, prefetching the next batch a share per tile, and accumulates them into its own full-width scratch
    (plus a per-block constant: Q4_1 minimums); the chunks' sums are added at the end, in natural order. The scratch is in packed
    byte order for Q8_0 (bytes widen straight to floats) and lane order for Q4 (nibbles are looked up one plane
    at a time)."""
    row_bytes = data.shape[1]
    flat = data.reshape(-1)
    active = np.nonzero(coeffs)[0]
    n_active = active.shape[0]
    minimums = 1 if kind == Q4_1 else 0
    shift, tile_bytes = 1 - minimums, 512 if kind == Q8_0 else 256
    table = nibble_table(8 - 8 * minimums)
    full = nb - nb % TILE
    stride = ((nb + TILE - 1) // TILE) * TILE * (4 if kind == Q8_0 else 1)
    share = share_bytes(row_bytes, nb)
    parts = np.zeros((chunks, nb * BLOCK), np.float32)  # per chunk, lane order (Q4) / byte order (Q8_0)
    constants = np.zeros((chunks, nb), np.float32)
    for chunk in prange(chunks):
        c = np.int64(chunk)
        lo, hi = c * n_active // chunks, (c + 1) * n_active // chunks
        acc, constant = parts[c], constants[c]
        scales = np.empty(ROW_BATCH * stride, np.float32)
        base, ahead = np.empty(ROW_BATCH, np.int64), np.empty(ROW_BATCH, np.int64)
        for batch in range(lo, hi, ROW_BATCH):
            count = min(ROW_BATCH, hi - batch)
            following = max(0, min(ROW_BATCH, hi - batch - ROW_BATCH))  # the next batch: fetched a share per tile
            for i in range(following):
                ahead[i] = rows[active[batch + ROW_BATCH + i]] * row_bytes
            for i in range(count):
                k = active[batch + i]
                base[i] = rows[k] * row_bytes
                _batch_scales(kind, flat, base[i], shift, tile_bytes, minimums, coeffs[k], 0, nb, scales, i * stride,
                              constant)
            for start in range(0, full, TILE):
                prefetch_shares(flat, ahead, following, start, share)
                _accumulate_tile(kind, flat, base, unit_offsets(start, shift, tile_bytes)[1], table, count, scales,
                                 stride, start, TILE, acc)
            if full < nb:
                prefetch_shares(flat, ahead, following, full, share)
                _accumulate_tile(kind, flat, base, unit_offsets(full, shift, tile_bytes)[1], table, count, scales,
                                 stride, full, nb - full, acc)
    for start in range(0, nb, TILE):
        width = min(TILE, nb - start)
        for e in range(BLOCK):
            g, j = divmod(e, 4)
            for b in range(width):
                at = (g * width + b) * 4 + j if kind == Q8_0 else e * width + b
                total = np.float32(0.0)
                for c in range(chunks):
                    total += parts[c, start * BLOCK + at] + constants[c, start + b]
                out[(start + b) * BLOCK + e] = total


@njit(inline="always", **OPTIONS)
def _batch_scales(kind, w, wo, shift, tile_bytes, minimums, coeff, block_lo, block_hi, scales, so, constant):
    """scales[so + b] = coeff * d_b for the chunk's blocks b (Q8_0: each repeated 4 times, as `expand4`);
    constant[b] += coeff * m_b for Q4_1."""
    c = splat_f32(coeff)
    for start in range(block_lo, block_hi, TILE):
        width = min(TILE, block_hi - start)
        header, _ = unit_offsets(start, shift, tile_bytes)
        scale = mul(c, load_f16_bytes(w, wo + header, width))
        if kind == Q8_0:
            e0, e1, e2, e3 = expand4(scale)
            o = so + (start - block_lo) * 4
            store_f32(scales, o, e0, 16)
            store_f32(scales, o + 16, e1, 16)
            store_f32(scales, o + 32, e2, 16)
            store_f32(scales, o + 48, e3, 16)
        else:
            store_f32(scales, so + start - block_lo, scale, 16)
        if minimums:
            o = start - block_lo
            minimum = mul(c, load_f16_bytes(w, wo + header + 32, width))
            store_f32(constant, o, add(minimum, load_f32(constant, o, width)), width)


@njit(inline="always", **OPTIONS)
def _accumulate_tile(kind, flat, base, quants, table, count, scales, stride, block, width, acc):
    if kind == Q8_0:
        _q8_accumulate_tile(flat, base, quants, count, scales, stride, block, width, acc)
    else:
        _q4_accumulate_tile(flat, base, quants, table, count, scales, stride, block, width, acc)


@njit(inline="always", **OPTIONS)
def _q8_accumulate_tile(flat, base, quants, count, scales, stride, block, width, acc):
    """acc (byte order) += sum over the batch's rows i of scales_i * int8 quants, for one tile whose first block
    is `block` within the chunk: per group, 4 vectors of sums stay in registers across the batch."""
    n = width * 4
    for g in range(8):
        s, q = block * BLOCK + g * n, quants + g * n
        a0, a1 = load_f32(acc, s, n), load_f32(acc, s + 16, n - 16)
        a2, a3 = load_f32(acc, s + 32, n - 32), load_f32(acc, s + 48, n - 48)
        for i in range(count):
            e, b = i * stride + block * 4, base[i] + q
            a0 = fma(load_f32(scales, e, 16), load_s8_as_f32(flat, b, n), a0)
            a1 = fma(load_f32(scales, e + 16, 16), load_s8_as_f32(flat, b + 16, n - 16), a1)
            a2 = fma(load_f32(scales, e + 32, 16), load_s8_as_f32(flat, b + 32, n - 32), a2)
            a3 = fma(load_f32(scales, e + 48, 16), load_s8_as_f32(flat, b + 48, n - 48), a3)
        store_f32(acc, s, a0, n)
        store_f32(acc, s + 16, a1, n - 16)
        store_f32(acc, s + 32, a2, n - 32)
        store_f32(acc, s + 48, a3, n - 48)


@njit(inline="always", **OPTIONS)
def _q4_accumulate_tile(flat, base, quants, table, count, scales, stride, block, width, acc):
    """As `_q8_accumulate_tile` for 4-bit quants looked up in `table`: low nibbles go to group g, high to g + 4."""
    n = width * 4
    for g in range(4):
        s, s2 = block * BLOCK + g * n, block * BLOCK + (g + 4) * n
        a0, a1 = load_f32(acc, s, width), load_f32(acc, s + width, width)
        a2, a3 = load_f32(acc, s + 2 * width, width), load_f32(acc, s + 3 * width, width)
        b0, b1 = load_f32(acc, s2, width), load_f32(acc, s2 + width, width)
        b2, b3 = load_f32(acc, s2 + 2 * width, width), load_f32(acc, s2 + 3 * width, width)
        for i in range(count):
            e = load_f32(scales, i * stride + block, 16)
            p0, p1, p2, p3, p4, p5, p6, p7 = nibble_planes_as_f32(load_bytes(flat, base[i] + quants + g * n, n), table)
            a0, b0, a1, b1 = fma(e, p0, a0), fma(e, p1, b0), fma(e, p2, a1), fma(e, p3, b1)
            a2, b2, a3, b3 = fma(e, p4, a2), fma(e, p5, b2), fma(e, p6, a3), fma(e, p7, b3)
        store_f32(acc, s, a0, width)
        store_f32(acc, s + width, a1, width)
        store_f32(acc, s + 2 * width, a2, width)
        store_f32(acc, s + 3 * width, a3, width)
        store_f32(acc, s2, b0, width)
        store_f32(acc, s2 + width, b1, width)
        store_f32(acc, s2 + 2 * width, b2, width)
        store_f32(acc, s2 + 3 * width, b3, width)
