"""numba dot products over quantized packed rows (Q8_0, Q4_x, Q5_x, and the K-quants through `quant_dot_k.py`, in the
tiled layouts of `packed.py`): the dense and gathered-row products of every weight matrix, with int8 activations per
32-block as llama.cpp does (exact integer block dots on AVX-512 VNNI, float32 scaling) or float32 activations.
`dispatch.py` picks one kernel per format; reference twins: `reference.py`.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .formats import Q4_K, Q5_K, Q6_K, Q8_0
from .packed import BLOCK, TILE, quant_layout
from .row_tiles import OPTIONS, prefetch_shares, share_bytes, unit_offsets
from .simd_bits import five_bit_quants
from .simd_dot import dot_s8s8, dot_u8s8, signed_dot_start
from .simd_float import add, fma, hsum, mul, splat_f32, to_f32, zeros_f32
from .simd_int import add_i32, high_nibbles, low_nibbles, scale_i32, zeros_i32
from .simd_memory import load_bytes, load_f16_bytes, load_f32, load_i32
from .simd_planes import byte_planes_as_f32, nibble_planes_as_f32, nibble_table
from .quant_dot_k import (q4k_float_tile, q4k_int8_pair, q4k_int8_tile, q5k_float_tile, q5k_int8_pair, q5k_int8_tile,
                          q6k_float_tile, q6k_int8_pair, q6k_int8_tile)
from .variants import specialization

# A row is handled a tile (16 blocks) at a time: whole tiles with the constant width TILE, so that every masked
# load folds into a plain one, then the last partial tile. Each tile helper handles one format, without
# branches: branches around array arguments make numba emit reference counting calls inside the hot loop.


@njit(inline="always", **OPTIONS)
def _operands(minimums, xp, xsum, qx, dx, qsum):
    """The activation operands of the tile helpers: (minimums, nibble table, xp, xsum, qx, dx, qsum), flat."""
    return (minimums, nibble_table(8 - 8 * minimums), xp.reshape(-1), xsum.reshape(-1), qx.reshape(-1),
            dx.reshape(-1), qsum.reshape(-1))


@njit(inline="always", **OPTIONS)
def _groups(data, dense, rows):
    """(rows to compute, groups of four): dense rows come a quarter of the matrix apart in a group (four forward
    streams; four adjacent rows at a time halve the speed, as the hardware prefetcher takes them for random
    reads), random rows as four consecutive entries of `rows`."""
    count = data.shape[0] if dense else rows.shape[0]
    return count, (count + 3) // 4


@njit(inline="always", **OPTIONS)
def _dot_group(tile, pair, pairs, group, w, ops, count, groups, nb, row_bytes, dense, rows, out):
    """out[t, k..] for the four rows of `group` and every token t: `tile` (one format's helper) adds up each
    tile for one token, `pair` (with `pairs`: int8 activations) for two, each token's arithmetic `tile`'s. (Float
    activations go one token at a time: with fastmath, a pair of float helpers may round differently.) Four rows at a time (four streams in flight: random rows then run at the speed of a plain read of
    them); for random rows, the next four rows are prefetched a share per tile. Everything is addressed as flat
    array + offset: a row view per row would cost reference counting."""
    cols, last, share = nb * BLOCK, count - 1, share_bytes(row_bytes, nb)
    step = groups if dense else 1
    k = np.int64(group) * (1 if dense else 4)  # prange's index may be unsigned: with int64 offsets, floats
    k1, k2, k3 = min(k + step, last), min(k + 2 * step, last), min(k + 3 * step, last)  # past the end: last row
    wo = (_row_offset(rows, dense, k, row_bytes), _row_offset(rows, dense, k1, row_bytes),
          _row_offset(rows, dense, k2, row_bytes), _row_offset(rows, dense, k3, row_bytes))
    ahead = (_ahead_offset(rows, dense, k + 4, count, row_bytes),
             _ahead_offset(rows, dense, k + 5, count, row_bytes),
             _ahead_offset(rows, dense, k + 6, count, row_bytes),
             _ahead_offset(rows, dense, k + 7, count, row_bytes))
    none = (np.int64(-1), np.int64(-1), np.int64(-1), np.int64(-1))
    t, tokens = 0, out.shape[0]
    while pairs and t + 1 < tokens:  # two tokens at a time: each weight vector loaded (and unpacked) once for both
        a0, a1, a2, a3, b0, b1, b2, b3 = _four_rows_pair(pair, w, wo, nb, ops, t * cols, t * nb, (t + 1) * cols,
                                                         (t + 1) * nb, ahead, share)
        out[t, k], out[t, k1], out[t, k2], out[t, k3] = a0, a1, a2, a3
        out[t + 1, k], out[t + 1, k1], out[t + 1, k2], out[t + 1, k3] = b0, b1, b2, b3
        ahead = none  # fetched with the first tokens
        t += 2
    while t < tokens:  # the last one, or every one
        out[t, k], out[t, k1], out[t, k2], out[t, k3] = _four_rows(tile, w, wo, nb, ops, t * cols, t * nb, ahead,
                                                                   share)
        ahead = none
        t += 1


@functools.cache
def dot_rows(kind: int, float_activations: bool):
    """The product kernel for packed rows of format `kind` (Q8_0, Q4_x, Q5_x, Q4_K, Q5_K, Q6_K) with int8
    activations, or float32 ones: kernel(data, nb, xp, xsum, qx, dx, qsum, dense, rows, out) sets out[t, k] =
    data[r_k] . x[t] with r_k = k (dense) or rows[k], data packed rows of nb blocks, x prepared activations
    (`cpu_quant.Activations`)."""
    minimums, high_bits = quant_layout(kind).minimums, quant_layout(kind).high_bits

    @specialization(kind, float_activations, parallel=True, fastmath=True)
    def kernel(data, nb, xp, xsum, qx, dx, qsum, dense, rows, out):
        w, ops = data.reshape(-1), _operands(minimums, xp, xsum, qx, dx, qsum)
        count, groups = _groups(data, dense, rows)
        for group in prange(groups):
            if kind == Q8_0:  # constants: numba compiles the one branch they leave
                tile, pair = (_q8_float_tile if float_activations else _q8_int8_tile), _q8_int8_pair
            elif kind == Q4_K:
                tile, pair = (q4k_float_tile if float_activations else q4k_int8_tile), q4k_int8_pair
            elif kind == Q5_K:
                tile, pair = (q5k_float_tile if float_activations else q5k_int8_tile), q5k_int8_pair
            elif kind == Q6_K:
                tile, pair = (q6k_float_tile if float_activations else q6k_int8_tile), q6k_int8_pair
            elif high_bits:
                tile, pair = (_q5_float_tile if float_activations else _q5_int8_tile), _q5_int8_pair
            else:
                tile, pair = (_q4_float_tile if float_activations else _q4_int8_tile), _q4_int8_pair
            _dot_group(tile, pair, not float_activations, group, w, ops, count, groups, nb, data.shape[1], dense,
                       rows, out)

    return kernel


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
def _four_rows_pair(pair, w, wo, nb, ops, xo0, bo0, xo1, bo1, ahead, share):
    """`_four_rows` for two tokens (activations at xo0/bo0 and xo1/bo1): the first's four dots, the second's."""
    full = nb - nb % TILE
    a0, a1, a2, a3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    b0, b1, b2, b3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    for start in range(0, full, TILE):
        prefetch_shares(w, ahead, 4, start, share)
        a0, b0 = pair(w, wo[0], ops, xo0, bo0, xo1, bo1, start, TILE, a0, b0)
        a1, b1 = pair(w, wo[1], ops, xo0, bo0, xo1, bo1, start, TILE, a1, b1)
        a2, b2 = pair(w, wo[2], ops, xo0, bo0, xo1, bo1, start, TILE, a2, b2)
        a3, b3 = pair(w, wo[3], ops, xo0, bo0, xo1, bo1, start, TILE, a3, b3)
    if full < nb:
        prefetch_shares(w, ahead, 4, full, share)
        a0, b0 = pair(w, wo[0], ops, xo0, bo0, xo1, bo1, full, nb - full, a0, b0)
        a1, b1 = pair(w, wo[1], ops, xo0, bo0, xo1, bo1, full, nb - full, a1, b1)
        a2, b2 = pair(w, wo[2], ops, xo0, bo0, xo1, bo1, full, nb - full, a2, b2)
        a3, b3 = pair(w, wo[3], ops, xo0, bo0, xo1, bo1, full, nb - full, a3, b3)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)


@njit(inline="always", **OPTIONS)
def _q8_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """(Every tile helper: w[wo:] one packed row, ops = (minimums, table, xp, xsum, qx, dx, qsum) with the
    activations at xo and the per-block arrays at bo; adds the tile whose first block is `start` to `total`.)
    total + per block b of the tile: d_b dx_b (q_b . qx_b), the dot exact in int32 (`simd_dot.dot_s8s8`).
    Four independent sums: one chain would be bound by the dot instruction's latency, not its throughput."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4  # bytes per group of 4 elements x `width` blocks
    header, quants = unit_offsets(start, 1, 512)
    o, x = wo + quants, xo + start * 32
    acc0 = dot_s8s8(signed_dot_start(load_i32(qsum, bo + start, width)), load_bytes(w, o, n),
                    load_bytes(qx, x, n))
    acc1 = dot_s8s8(zeros_i32(), load_bytes(w, o + n, n), load_bytes(qx, x + n, n))
    acc2 = dot_s8s8(zeros_i32(), load_bytes(w, o + 2 * n, n), load_bytes(qx, x + 2 * n, n))
    acc3 = dot_s8s8(zeros_i32(), load_bytes(w, o + 3 * n, n), load_bytes(qx, x + 3 * n, n))
    o, x = o + 4 * n, x + 4 * n
    acc0 = dot_s8s8(acc0, load_bytes(w, o, n), load_bytes(qx, x, n))
    acc1 = dot_s8s8(acc1, load_bytes(w, o + n, n), load_bytes(qx, x + n, n))
    acc2 = dot_s8s8(acc2, load_bytes(w, o + 2 * n, n), load_bytes(qx, x + 2 * n, n))
    acc3 = dot_s8s8(acc3, load_bytes(w, o + 3 * n, n), load_bytes(qx, x + 3 * n, n))
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
def _q5_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """As `_q4_int8_tile` for 5-bit quants (each group's nibbles completed by the tile's fifth bits, the group after
    the nibbles): d dx ((q - 16) . qx) for Q5_0, d dx (q . qx) + m dx sum(qx) for Q5_1."""
    minimums, qx, dx, qsum = ops[0], ops[4], ops[5], ops[6]
    n = width * 4
    block_qsum = load_i32(qsum, bo + start, width)
    acc0, acc1 = scale_i32(block_qsum, 16 * minimums - 16), zeros_i32()
    acc2, acc3 = zeros_i32(), zeros_i32()  # four independent sums (vpdpbusd latency)
    header, quants = unit_offsets(start, 1 - minimums, 320)
    o, x = wo + quants, xo + start * 32
    fifth = load_bytes(w, o + 4 * n, n)
    for g in range(0, 4, 2):  # low nibbles pair with activation group g, high nibbles with group g + 4
        low, high = five_bit_quants(load_bytes(w, o + g * n, n), fifth, g)
        acc0 = dot_u8s8(acc0, low, load_bytes(qx, x + g * n, n))
        acc1 = dot_u8s8(acc1, high, load_bytes(qx, x + (g + 4) * n, n))
        low, high = five_bit_quants(load_bytes(w, o + (g + 1) * n, n), fifth, g + 1)
        acc2 = dot_u8s8(acc2, low, load_bytes(qx, x + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high, load_bytes(qx, x + (g + 5) * n, n))
    acc = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    block_dx = load_f32(dx, bo + start, width)
    total = fma(to_f32(acc), mul(load_f16_bytes(w, wo + header, width), block_dx), total)
    minimum = load_f16_bytes(w, wo + header + 32, width * minimums)  # zeros for Q5_0
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


@njit(inline="always", **OPTIONS)
def _q5_float_tile(w, wo, ops, xo, bo, start, width, total):
    """As `_q4_float_tile` for 5-bit quants: q (0..31, widened as bytes) per element, then per block
    d_b (q_b . x_b) + c_b sum(x_b), c = m for Q5_1 and -16 d for Q5_0."""
    minimums, xp, xsum = ops[0], ops[2], ops[3]
    n = width * 4
    p0, p1, p2, p3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 1 - minimums, 320)
    fifth = load_bytes(w, wo + quants + 4 * n, n)
    for g in range(4):
        low, high = five_bit_quants(load_bytes(w, wo + quants + g * n, n), fifth, g)
        l0, l1, l2, l3 = byte_planes_as_f32(low)
        h0, h1, h2, h3 = byte_planes_as_f32(high)
        lo, hi = xo + start * 32 + g * n, xo + start * 32 + (g + 4) * n  # low nibbles: group g, high: g + 4
        p0 = fma(h0, load_f32(xp, hi, width), fma(l0, load_f32(xp, lo, width), p0))
        p1 = fma(h1, load_f32(xp, hi + width, width), fma(l1, load_f32(xp, lo + width, width), p1))
        p2 = fma(h2, load_f32(xp, hi + 2 * width, width), fma(l2, load_f32(xp, lo + 2 * width, width), p2))
        p3 = fma(h3, load_f32(xp, hi + 3 * width, width), fma(l3, load_f32(xp, lo + 3 * width, width), p3))
    d = load_f16_bytes(w, wo + header, width)
    total = fma(add(add(p0, p1), add(p2, p3)), d, total)
    constant = fma(d, splat_f32(16 * minimums - 16), load_f16_bytes(w, wo + header + 32, width * minimums))
    return fma(constant, load_f32(xsum, bo + start, width), total)


# Two tokens at a time (`_four_rows_pair`, int8 activations): each weight vector is loaded (and unpacked) once
# for both tokens, then each token gets exactly the one-token helper's arithmetic (integer dots: bit for bit).

@njit(inline="always", **OPTIONS)
def _q8_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    """`_q8_int8_tile` for two tokens."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4
    header, quants = unit_offsets(start, 1, 512)
    o, x0, x1 = wo + quants, xo0 + start * 32, xo1 + start * 32
    w0, w1 = load_bytes(w, o, n), load_bytes(w, o + n, n)
    w2, w3 = load_bytes(w, o + 2 * n, n), load_bytes(w, o + 3 * n, n)
    acc0 = dot_s8s8(signed_dot_start(load_i32(qsum, bo0 + start, width)), w0, load_bytes(qx, x0, n))
    acc1 = dot_s8s8(zeros_i32(), w1, load_bytes(qx, x0 + n, n))
    acc2 = dot_s8s8(zeros_i32(), w2, load_bytes(qx, x0 + 2 * n, n))
    acc3 = dot_s8s8(zeros_i32(), w3, load_bytes(qx, x0 + 3 * n, n))
    bcc0 = dot_s8s8(signed_dot_start(load_i32(qsum, bo1 + start, width)), w0, load_bytes(qx, x1, n))
    bcc1 = dot_s8s8(zeros_i32(), w1, load_bytes(qx, x1 + n, n))
    bcc2 = dot_s8s8(zeros_i32(), w2, load_bytes(qx, x1 + 2 * n, n))
    bcc3 = dot_s8s8(zeros_i32(), w3, load_bytes(qx, x1 + 3 * n, n))
    o, x0, x1 = o + 4 * n, x0 + 4 * n, x1 + 4 * n
    w0, w1 = load_bytes(w, o, n), load_bytes(w, o + n, n)
    w2, w3 = load_bytes(w, o + 2 * n, n), load_bytes(w, o + 3 * n, n)
    acc0 = dot_s8s8(acc0, w0, load_bytes(qx, x0, n))
    acc1 = dot_s8s8(acc1, w1, load_bytes(qx, x0 + n, n))
    acc2 = dot_s8s8(acc2, w2, load_bytes(qx, x0 + 2 * n, n))
    acc3 = dot_s8s8(acc3, w3, load_bytes(qx, x0 + 3 * n, n))
    bcc0 = dot_s8s8(bcc0, w0, load_bytes(qx, x1, n))
    bcc1 = dot_s8s8(bcc1, w1, load_bytes(qx, x1 + n, n))
    bcc2 = dot_s8s8(bcc2, w2, load_bytes(qx, x1 + 2 * n, n))
    bcc3 = dot_s8s8(bcc3, w3, load_bytes(qx, x1 + 3 * n, n))
    d = load_f16_bytes(w, wo + header, width)
    a = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    b = add_i32(add_i32(bcc0, bcc1), add_i32(bcc2, bcc3))
    return (fma(to_f32(a), mul(d, load_f32(dx, bo0 + start, width)), total0),
            fma(to_f32(b), mul(d, load_f32(dx, bo1 + start, width)), total1))


@njit(inline="always", **OPTIONS)
def _q4_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    """`_q4_int8_tile` for two tokens."""
    minimums, qx, dx, qsum = ops[0], ops[4], ops[5], ops[6]
    n = width * 4
    qsum0, qsum1 = load_i32(qsum, bo0 + start, width), load_i32(qsum, bo1 + start, width)
    acc0, acc1 = scale_i32(qsum0, 8 * minimums - 8), zeros_i32()
    acc2, acc3 = zeros_i32(), zeros_i32()
    bcc0, bcc1 = scale_i32(qsum1, 8 * minimums - 8), zeros_i32()
    bcc2, bcc3 = zeros_i32(), zeros_i32()
    header, quants = unit_offsets(start, 1 - minimums, 256)
    o, x0, x1 = wo + quants, xo0 + start * 32, xo1 + start * 32
    for g in range(0, 4, 2):
        packed = load_bytes(w, o + g * n, n)
        low, high = low_nibbles(packed), high_nibbles(packed)
        acc0 = dot_u8s8(acc0, low, load_bytes(qx, x0 + g * n, n))
        acc1 = dot_u8s8(acc1, high, load_bytes(qx, x0 + (g + 4) * n, n))
        bcc0 = dot_u8s8(bcc0, low, load_bytes(qx, x1 + g * n, n))
        bcc1 = dot_u8s8(bcc1, high, load_bytes(qx, x1 + (g + 4) * n, n))
        packed = load_bytes(w, o + (g + 1) * n, n)
        low, high = low_nibbles(packed), high_nibbles(packed)
        acc2 = dot_u8s8(acc2, low, load_bytes(qx, x0 + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high, load_bytes(qx, x0 + (g + 5) * n, n))
        bcc2 = dot_u8s8(bcc2, low, load_bytes(qx, x1 + (g + 1) * n, n))
        bcc3 = dot_u8s8(bcc3, high, load_bytes(qx, x1 + (g + 5) * n, n))
    d = load_f16_bytes(w, wo + header, width)
    minimum = load_f16_bytes(w, wo + header + 32, width * minimums)  # zeros for Q4_0
    dx0, dx1 = load_f32(dx, bo0 + start, width), load_f32(dx, bo1 + start, width)
    a = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    b = add_i32(add_i32(bcc0, bcc1), add_i32(bcc2, bcc3))
    total0 = fma(minimum, mul(dx0, to_f32(qsum0)), fma(to_f32(a), mul(d, dx0), total0))
    total1 = fma(minimum, mul(dx1, to_f32(qsum1)), fma(to_f32(b), mul(d, dx1), total1))
    return total0, total1


@njit(inline="always", **OPTIONS)
def _q5_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    """`_q5_int8_tile` for two tokens."""
    minimums, qx, dx, qsum = ops[0], ops[4], ops[5], ops[6]
    n = width * 4
    qsum0, qsum1 = load_i32(qsum, bo0 + start, width), load_i32(qsum, bo1 + start, width)
    acc0, acc1 = scale_i32(qsum0, 16 * minimums - 16), zeros_i32()
    acc2, acc3 = zeros_i32(), zeros_i32()
    bcc0, bcc1 = scale_i32(qsum1, 16 * minimums - 16), zeros_i32()
    bcc2, bcc3 = zeros_i32(), zeros_i32()
    header, quants = unit_offsets(start, 1 - minimums, 320)
    o, x0, x1 = wo + quants, xo0 + start * 32, xo1 + start * 32
    fifth = load_bytes(w, o + 4 * n, n)
    for g in range(0, 4, 2):
        low, high = five_bit_quants(load_bytes(w, o + g * n, n), fifth, g)
        acc0 = dot_u8s8(acc0, low, load_bytes(qx, x0 + g * n, n))
        acc1 = dot_u8s8(acc1, high, load_bytes(qx, x0 + (g + 4) * n, n))
        bcc0 = dot_u8s8(bcc0, low, load_bytes(qx, x1 + g * n, n))
        bcc1 = dot_u8s8(bcc1, high, load_bytes(qx, x1 + (g + 4) * n, n))
        low, high = five_bit_quants(load_bytes(w, o + (g + 1) * n, n), fifth, g + 1)
        acc2 = dot_u8s8(acc2, low, load_bytes(qx, x0 + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high, load_bytes(qx, x0 + (g + 5) * n, n))
        bcc2 = dot_u8s8(bcc2, low, load_bytes(qx, x1 + (g + 1) * n, n))
        bcc3 = dot_u8s8(bcc3, high, load_bytes(qx, x1 + (g + 5) * n, n))
    d = load_f16_bytes(w, wo + header, width)
    minimum = load_f16_bytes(w, wo + header + 32, width * minimums)  # zeros for Q5_0
    dx0, dx1 = load_f32(dx, bo0 + start, width), load_f32(dx, bo1 + start, width)
    a = add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3))
    b = add_i32(add_i32(bcc0, bcc1), add_i32(bcc2, bcc3))
    total0 = fma(minimum, mul(dx0, to_f32(qsum0)), fma(to_f32(a), mul(d, dx0), total0))
    total1 = fma(minimum, mul(dx1, to_f32(qsum1)), fma(to_f32(b), mul(d, dx1), total1))
    return total0, total1
