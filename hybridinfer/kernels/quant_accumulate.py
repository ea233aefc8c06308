"""The sparse down projection (S3) over quantized packed rows with float32 coefficients (`float_activations`):
out = sum_k coeffs[k] * W_t[rows[k]] for Q8_0, Q4_x and Q5_x rows of `packed.py`, each weight widened to float32.
The default path, int8 coefficients, is `cpu_accumulate_int8.py`; `dispatch.py` picks one kernel per format;
reference twin: `reference.accumulate_rows`.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .formats import Q8_0
from .packed import BLOCK, QUANT_LAYOUTS, TILE
from .row_tiles import OPTIONS, prefetch_shares, share_bytes, unit_offsets
from .simd_bits import five_bit_quants
from .simd_float import add, expand4, fma, mul, splat_f32
from .simd_memory import load_bytes, load_f16_bytes, load_f32, load_s8_as_f32, store_f32
from .simd_planes import byte_planes_as_f32, nibble_planes_as_f32, nibble_table
from .variants import specialization

ROW_BATCH = 8  # rows summed per pass over the output, the partial sums kept in registers


@njit(inline="always", **OPTIONS)
def _layout(kind, nb):
    """minimums (Q4_1), the unit shift and tile bytes of `unit_offsets`, and the per-row stride of `scales`."""
    layout = QUANT_LAYOUTS[kind]
    stride = ((nb + TILE - 1) // TILE) * TILE * (4 if kind == Q8_0 else 1)
    return layout.minimums, layout.shift, layout.tile_bytes, stride


@njit(inline="always", **OPTIONS)
def _accumulate_chunk(kind, chunk, chunks, data, nb, rows, coeffs, active, parts, constants):
    """Chunk (thread) `chunk`'s share of the active rows, whole, ROW_BATCH at a time, prefetching the next batch
    a share per tile, summed into its own full-width scratch parts[chunk] (plus a per-block constant: Q4_1
    minimums). The scratch is in packed byte order for Q8_0 (bytes widen straight to floats) and lane order for
    Q4 (nibbles are looked up one plane at a time)."""
    row_bytes = data.shape[1]
    flat = data.reshape(-1)
    n_active = active.shape[0]
    minimums, shift, tile_bytes, stride = _layout(kind, nb)
    table = nibble_table(8 - 8 * minimums)
    full = nb - nb % TILE
    share = share_bytes(row_bytes, nb)
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


@njit(inline="always", **OPTIONS)
def _merge(kind, parts, constants, nb, chunks, out):
    """out = the chunks' sums, added in natural order, from scratch order back to the row's element order."""
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


@functools.cache
def quant_float_accumulate(kind: int):
    """The S3 kernel for packed rows of format `kind` with float32 coefficients: kernel(data, nb, rows, coeffs,
    out, chunks) sets out[:] = sum_k coeffs[k] * dequant(data[rows[k]]) over the rows with a nonzero coefficient,
    data packed rows of nb blocks, shared among `chunks` threads (`_accumulate_chunk`)."""

    @specialization(kind, parallel=True, fastmath=True)
    def kernel(data, nb, rows, coeffs, out, chunks):
        active = np.nonzero(coeffs)[0]
        parts = np.zeros((chunks, nb * BLOCK), np.float32)  # per chunk, lane order (Q4) / byte order (Q8_0)
        constants = np.zeros((chunks, nb), np.float32)
        for chunk in prange(chunks):
            _accumulate_chunk(kind, chunk, chunks, data, nb, rows, coeffs, active, parts, constants)
        _merge(kind, parts, constants, nb, chunks, out)

    return kernel


@njit(inline="always", **OPTIONS)
def _batch_scales(kind, w, wo, shift, tile_bytes, minimums, coeff, block_lo, block_hi, scales, so, constant):
    """scales[so + b] = coeff * d_b for the chunk's blocks b (Q8_0: each repeated 4 times, as `expand4`);
    constant[b] += coeff * m_b for Q4_1 and Q5_1, -16 coeff * d_b for Q5_0 (whose quants are read unsigned)."""
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
        elif QUANT_LAYOUTS[kind].high_bits:
            o = start - block_lo
            store_f32(constant, o, fma(splat_f32(-16.0), scale, load_f32(constant, o, width)), width)


@njit(inline="always", **OPTIONS)
def _accumulate_tile(kind, flat, base, quants, table, count, scales, stride, block, width, acc):
    if kind == Q8_0:
        _q8_accumulate_tile(flat, base, quants, count, scales, stride, block, width, acc)
    elif QUANT_LAYOUTS[kind].high_bits:
        _q5_accumulate_tile(flat, base, quants, count, scales, stride, block, width, acc)
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


@njit(inline="always", **OPTIONS)
def _q5_accumulate_tile(flat, base, quants, count, scales, stride, block, width, acc):
    """As `_q4_accumulate_tile` for 5-bit quants q (0..31, completed by the tile's fifth bits and widened as bytes)."""
    n = width * 4
    for g in range(4):
        s, s2 = block * BLOCK + g * n, block * BLOCK + (g + 4) * n
        a0, a1 = load_f32(acc, s, width), load_f32(acc, s + width, width)
        a2, a3 = load_f32(acc, s + 2 * width, width), load_f32(acc, s + 3 * width, width)
        b0, b1 = load_f32(acc, s2, width), load_f32(acc, s2 + width, width)
        b2, b3 = load_f32(acc, s2 + 2 * width, width), load_f32(acc, s2 + 3 * width, width)
        for i in range(count):
            e = load_f32(scales, i * stride + block, 16)
            at = base[i] + quants
            low, high = five_bit_quants(load_bytes(flat, at + g * n, n), load_bytes(flat, at + 4 * n, n), g)
            l0, l1, l2, l3 = byte_planes_as_f32(low)
            h0, h1, h2, h3 = byte_planes_as_f32(high)
            a0, b0, a1, b1 = fma(e, l0, a0), fma(e, h0, b0), fma(e, l1, a1), fma(e, h1, b1)
            a2, b2, a3, b3 = fma(e, l2, a2), fma(e, h2, b2), fma(e, l3, a3), fma(e, h3, b3)
        store_f32(acc, s, a0, width)
        store_f32(acc, s + width, a1, width)
        store_f32(acc, s + 2 * width, a2, width)
        store_f32(acc, s + 3 * width, a3, width)
        store_f32(acc, s2, b0, width)
        store_f32(acc, s2 + width, b1, width)
        store_f32(acc, s2 + 2 * width, b2, width)
        store_f32(acc, s2 + 3 * width, b3, width)
