"""S3 over quantized rows with int8 coefficients: out = sum_k coeffs[k] * W_t[rows[k]] for Q8_0, Q4_x and Q5_x
packed rows (`packed.py`), as exact integer dot products over four rows at a time.

The active rows (coeffs != 0, in order) are cut into batches of INT8_BATCH, whatever the thread count. In a batch,
each row's coefficient times its block scale, s_ib = c_i * d_ib, is quantized per block b over the batch, as
llama.cpp quantizes the hidden activations per block before the down projection:

    S_b = max_i |s_ib| / 127,   k_ib = round(s_ib / S_b)        (int8; each off by at most S_b / 2)
    out[block b] += S_b * sum_i k_ib * qv_ib      (qv = q for Q8_0, q - 8 for Q4_x, q - 16 for Q5_x; exact in int32)
    out[block b] += sum_i c_i * (m_ib + 8 d_ib)   (Q4_1, whose d q + m is d (q - 8) + m + 8 d; Q5_1: m + 16 d)

(Centring Q4_1's and Q5_1's quants keeps the integer sums, and so their rounding, as small as Q4_0's.)
The integer sums run on vpdpbusd: the bytes of four rows are interleaved (`simd_rows.interleave4`) so that each
32-bit lane holds one element of the four rows and the four rows' coefficients multiply them in one instruction
(unsigned weights times signed coefficients; Q8_0 weights as `simd_dot.dot_s8s8` takes them, its start subtracted
once per block).
That is fewer instructions than turning every weight into a float (`quant_accumulate.py`, the float32
path), which for Q4 cannot keep up with the memory (docs/cpu-decoding.md, "Kernel design choices"). Reference twin: `reference.accumulate_rows_int8`.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .formats import Q8_0
from .packed import BLOCK, QUANT_LAYOUTS, TILE
from .row_tiles import OPTIONS, prefetch_shares, share_bytes, unit_offsets
from .simd_bits import five_bit_quants
from .simd_dot import SIGNED_DOT_BY_BIAS, dot_s8s8, dot_u8s8
from .simd_float import add, fma, mul, splat_f32, to_f32, zeros_f32
from .simd_int import add_i32, high_nibbles, low_nibbles, scale_i32, zeros_i32
from .simd_memory import load_bytes, load_f16_bytes, load_f32, load_i32, store_f32
from .simd_rows import abs_max, block_lanes, int8_scales, interleave4, pack_bytes4, round_i32, store_i32
from .variants import specialization

INT8_BATCH = 8  # rows whose coefficients share a scale per block (a multiple of 4)
_QUADS = INT8_BATCH // 4


@njit(inline="always", **OPTIONS)
def _layout(kind, nb):
    """minimums (Q4_1), the unit shift and tile bytes of `unit_offsets`, the tile count and the stored byte's offset
    (the byte is qv - offset)."""
    layout = QUANT_LAYOUTS[kind]
    offset = -layout.centre if kind != Q8_0 or SIGNED_DOT_BY_BIAS else 0  # Q8_0: `dot_s8s8`'s start
    return layout.minimums, layout.shift, layout.tile_bytes, (nb + TILE - 1) // TILE, offset


@njit(inline="always", **OPTIONS)
def _int8_chunk(kind, chunk, chunks, data, nb, rows, coeffs, active, parts, constants):
    """Chunk (thread) `chunk`'s share of the batches, prefetching the next batch a share of each row per tile into
    L2 (into L1, the next batch would evict this one), accumulated into parts[chunk] (tile-interleaved order)."""
    row_bytes = data.shape[1]
    flat = data.reshape(-1)
    n_active = active.shape[0]
    n_batches = (n_active + INT8_BATCH - 1) // INT8_BATCH
    minimums, shift, tile_bytes, n_tiles, offset = _layout(kind, nb)
    full = nb // TILE
    share = share_bytes(row_bytes, nb)
    c = np.int64(chunk)
    acc, constant = parts[c], constants[c]
    base, ahead = np.empty(INT8_BATCH, np.int64), np.empty(INT8_BATCH, np.int64)
    codes = np.empty(n_tiles * _QUADS * 4 * 16, np.int32)  # per tile, quad of rows, result m: 16 lanes
    scales, offsets = np.empty(n_tiles * 16, np.float32), np.empty(n_tiles * 16, np.int32)
    last = (c + 1) * n_batches // chunks
    for batch in range(c * n_batches // chunks, last):
        lo = batch * INT8_BATCH
        count = min(INT8_BATCH, n_active - lo)
        for i in range(INT8_BATCH):  # past the end of the rows: the last row again, with a zero coefficient
            base[i] = rows[active[lo + min(i, count - 1)]] * row_bytes
        following = min(INT8_BATCH, n_active - lo - INT8_BATCH) if batch + 1 < last else 0
        for i in range(following):
            ahead[i] = rows[active[lo + INT8_BATCH + i]] * row_bytes
        _quantize_batch(flat, base, coeffs, active, lo, count, nb, shift, tile_bytes, minimums, offset, codes,
                        scales, offsets, constant)
        for t in range(full):
            prefetch_shares(flat, ahead, following, t * TILE, share)
            _tile(kind, flat, base, unit_offsets(t * TILE, shift, tile_bytes)[1], t, TILE, codes, scales,
                  offsets, acc)
        if full < n_tiles:
            prefetch_shares(flat, ahead, following, full * TILE, share)
            _tile(kind, flat, base, unit_offsets(full * TILE, shift, tile_bytes)[1], full, nb - full * TILE,
                  codes, scales, offsets, acc)


@njit(inline="always", **OPTIONS)
def _int8_merge(kind, parts, constants, nb, chunks, out):
    """out = the chunks' sums (summed into parts[0] and constants[0]), from the tile-interleaved order back to the
    row's element order: lanes 4j..4j+3 of result m hold 4 consecutive elements of block 4j + m."""
    total, constant = parts[0], constants[0]
    for k in range(1, chunks):  # contiguous: vectorized
        for i in range(total.shape[0]):
            total[i] += parts[k, i]
        for b in range(nb):
            constant[b] += constants[k, b]
    n_tiles = (nb + TILE - 1) // TILE
    groups, halves = QUANT_LAYOUTS[kind].groups, QUANT_LAYOUTS[kind].per_byte
    for t in range(n_tiles):
        for g in range(groups):
            for m in range(4):
                for h in range(halves):
                    at = (((t * groups + g) * 4 + m) * halves + h) * 16
                    for j in range(4):
                        b = t * TILE + 4 * j + m
                        if b < nb:
                            c, o, a = constant[b], b * BLOCK + h * 16 + 4 * g, at + 4 * j
                            for i in range(4):
                                out[o + i] = total[a + i] + c


@functools.cache
def int8_accumulate(kind: int):
    """The S3 kernel for packed rows of format `kind` with int8 coefficients: kernel(data, nb, rows, coeffs, out,
    chunks) sets out[:] = sum_k coeffs[k] * W_t[rows[k]] (rows with a zero coefficient skipped), data packed rows
    of nb blocks; `chunks` threads each take a share of the batches (`_int8_chunk`), summed at the end."""

    @specialization(kind, parallel=True, fastmath=True)
    def kernel(data, nb, rows, coeffs, out, chunks):
        active = np.nonzero(coeffs)[0]
        parts = np.zeros((chunks, ((nb + TILE - 1) // TILE) * TILE * BLOCK), np.float32)
        constants = np.zeros((chunks, nb), np.float32)
        for chunk in prange(chunks):
            _int8_chunk(kind, chunk, chunks, data, nb, rows, coeffs, active, parts, constants)
        _int8_merge(kind, parts, constants, nb, chunks, out)

    return kernel


@njit(inline="always", **OPTIONS)
def _quantize_batch(flat, base, coeffs, active, lo, count, nb, shift, tile_bytes, minimums, offset, codes, scales,
                    offsets, constant):
    """Per tile: scales (16 blocks) = S_b; codes = the quads' int8 k_ib, four rows to a lane, laid out as
    `interleave4`'s results (via `block_lanes`); offsets = offset * sum_i k_ib; constant += c_i (m_ib - offset d_ib)
    (Q4_1, Q5_1)."""
    for t in range((nb + TILE - 1) // TILE):
        start = t * TILE
        width = min(TILE, nb - start)
        header = unit_offsets(start, shift, tile_bytes)[0]
        amax = zeros_f32()
        for i in range(count):
            amax = abs_max(amax, _scaled(flat, base[i] + header, width, coeffs[active[lo + i]]))
        scale, inverse = int8_scales(amax)
        store_f32(scales, t * 16, scale, 16)
        total = zeros_i32()
        for quad in range(_QUADS):
            k0 = _code(flat, base, coeffs, active, lo, count, 4 * quad, header, width, inverse)
            k1 = _code(flat, base, coeffs, active, lo, count, 4 * quad + 1, header, width, inverse)
            k2 = _code(flat, base, coeffs, active, lo, count, 4 * quad + 2, header, width, inverse)
            k3 = _code(flat, base, coeffs, active, lo, count, 4 * quad + 3, header, width, inverse)
            total = add_i32(add_i32(total, add_i32(k0, k1)), add_i32(k2, k3))
            c0, c1, c2, c3 = block_lanes(pack_bytes4(k0, k1, k2, k3))
            at = (t * _QUADS + quad) * 64
            store_i32(codes, at, c0)
            store_i32(codes, at + 16, c1)
            store_i32(codes, at + 32, c2)
            store_i32(codes, at + 48, c3)
        store_i32(offsets, t * 16, scale_i32(total, offset))
        if minimums:  # summed in a register: a store and reload per row would wait on store forwarding
            m = zeros_f32()
            for i in range(count):
                coeff = coeffs[active[lo + i]]
                m = add(m, fma(splat_f32(-offset), _scaled(flat, base[i] + header, width, coeff),
                               _scaled(flat, base[i] + header + 32, width, coeff)))
            store_f32(constant, start, add(m, load_f32(constant, start, width)), width)


@njit(inline="always", **OPTIONS)
def _scaled(flat, at, width, coeff):
    """coeff * the `width` f16 values at flat[at:] (block scales d, or Q4_1 minimums m), each product exact
    float32 (as the twin computes it)."""
    return mul(splat_f32(coeff), load_f16_bytes(flat, at, width))


@njit(inline="always", **OPTIONS)
def _code(flat, base, coeffs, active, lo, count, i, header, width, inverse):
    """round(c_i d_ib / S_b) for the batch's row i, zeros past its last row."""
    if i >= count:
        return zeros_i32()
    return round_i32(mul(_scaled(flat, base[i] + header, width, coeffs[active[lo + i]]), inverse))


@njit(inline="always", **OPTIONS)
def _tile(kind, flat, base, quants, t, width, codes, scales, offsets, acc):
    if kind == Q8_0:
        _q8_tile(flat, base, quants, t, width, codes, scales, offsets, acc)
    elif QUANT_LAYOUTS[kind].high_bits:
        _q5_tile(flat, base, quants, t, width, codes, scales, offsets, acc)
    else:
        _q4_tile(flat, base, quants, t, width, codes, scales, offsets, acc)


@njit(inline="always", **OPTIONS)
def _q4_tile(flat, base, quants, t, width, codes, scales, offsets, acc):
    """acc (tile t's 512 floats: group g, result m, low/high nibbles, 16 lanes) += S_b * the batch's integer sums.
    Per group: the four rows of each quad interleaved, low nibbles pair with elements 4g + j, high with 16 + 4g + j."""
    n = width * 4
    s0, s1, s2, s3 = block_lanes(load_f32(scales, t * 16, 16))
    o0, o1, o2, o3 = block_lanes(load_i32(offsets, t * 16, 16))
    for g in range(4):
        l0, l1, l2, l3, h0, h1, h2, h3 = o0, o1, o2, o3, o0, o1, o2, o3
        for quad in range(_QUADS):
            at, i = quants + g * n, 4 * quad
            r0, r1, r2, r3 = interleave4(load_bytes(flat, base[i] + at, n), load_bytes(flat, base[i + 1] + at, n),
                                         load_bytes(flat, base[i + 2] + at, n), load_bytes(flat, base[i + 3] + at, n))
            c = (t * _QUADS + quad) * 64
            c0, c1 = load_i32(codes, c, 16), load_i32(codes, c + 16, 16)
            c2, c3 = load_i32(codes, c + 32, 16), load_i32(codes, c + 48, 16)
            l0, h0 = dot_u8s8(l0, low_nibbles(r0), c0), dot_u8s8(h0, high_nibbles(r0), c0)
            l1, h1 = dot_u8s8(l1, low_nibbles(r1), c1), dot_u8s8(h1, high_nibbles(r1), c1)
            l2, h2 = dot_u8s8(l2, low_nibbles(r2), c2), dot_u8s8(h2, high_nibbles(r2), c2)
            l3, h3 = dot_u8s8(l3, low_nibbles(r3), c3), dot_u8s8(h3, high_nibbles(r3), c3)
        at = (t * 4 + g) * 128
        _add_scaled(acc, at, l0, s0)
        _add_scaled(acc, at + 16, h0, s0)
        _add_scaled(acc, at + 32, l1, s1)
        _add_scaled(acc, at + 48, h1, s1)
        _add_scaled(acc, at + 64, l2, s2)
        _add_scaled(acc, at + 80, h2, s2)
        _add_scaled(acc, at + 96, l3, s3)
        _add_scaled(acc, at + 112, h3, s3)


@njit(inline="always", **OPTIONS)
def _q5_tile(flat, base, quants, t, width, codes, scales, offsets, acc):
    """As `_q4_tile` for 5-bit quants: each quad's fifth bits (the group after the nibbles) are interleaved as its
    nibbles are, and complete them byte by byte."""
    n = width * 4
    s0, s1, s2, s3 = block_lanes(load_f32(scales, t * 16, 16))
    o0, o1, o2, o3 = block_lanes(load_i32(offsets, t * 16, 16))
    for g in range(4):
        l0, l1, l2, l3, h0, h1, h2, h3 = o0, o1, o2, o3, o0, o1, o2, o3
        for quad in range(_QUADS):
            at, i = quants + g * n, 4 * quad
            r0, r1, r2, r3 = interleave4(load_bytes(flat, base[i] + at, n), load_bytes(flat, base[i + 1] + at, n),
                                         load_bytes(flat, base[i + 2] + at, n), load_bytes(flat, base[i + 3] + at, n))
            at = quants + 4 * n
            f0, f1, f2, f3 = interleave4(load_bytes(flat, base[i] + at, n), load_bytes(flat, base[i + 1] + at, n),
                                         load_bytes(flat, base[i + 2] + at, n), load_bytes(flat, base[i + 3] + at, n))
            c = (t * _QUADS + quad) * 64
            c0, c1 = load_i32(codes, c, 16), load_i32(codes, c + 16, 16)
            c2, c3 = load_i32(codes, c + 32, 16), load_i32(codes, c + 48, 16)
            low, high = five_bit_quants(r0, f0, g)
            l0, h0 = dot_u8s8(l0, low, c0), dot_u8s8(h0, high, c0)
            low, high = five_bit_quants(r1, f1, g)
            l1, h1 = dot_u8s8(l1, low, c1), dot_u8s8(h1, high, c1)
            low, high = five_bit_quants(r2, f2, g)
            l2, h2 = dot_u8s8(l2, low, c2), dot_u8s8(h2, high, c2)
            low, high = five_bit_quants(r3, f3, g)
            l3, h3 = dot_u8s8(l3, low, c3), dot_u8s8(h3, high, c3)
        at = (t * 4 + g) * 128
        _add_scaled(acc, at, l0, s0)
        _add_scaled(acc, at + 16, h0, s0)
        _add_scaled(acc, at + 32, l1, s1)
        _add_scaled(acc, at + 48, h1, s1)
        _add_scaled(acc, at + 64, l2, s2)
        _add_scaled(acc, at + 80, h2, s2)
        _add_scaled(acc, at + 96, l3, s3)
        _add_scaled(acc, at + 112, h3, s3)


@njit(inline="always", **OPTIONS)
def _q8_tile(flat, base, quants, t, width, codes, scales, offsets, acc):
    """As `_q4_tile` for Q8_0: eight groups of whole bytes, signed dots against the codes (`simd_dot.dot_s8s8`,
    whose start, 0 or -128 sum(k), the offsets hold)."""
    n = width * 4
    s0, s1, s2, s3 = block_lanes(load_f32(scales, t * 16, 16))
    o0, o1, o2, o3 = block_lanes(load_i32(offsets, t * 16, 16))
    for g in range(8):
        a0, a1, a2, a3 = o0, o1, o2, o3
        for quad in range(_QUADS):
            at, i = quants + g * n, 4 * quad
            r0, r1, r2, r3 = interleave4(load_bytes(flat, base[i] + at, n), load_bytes(flat, base[i + 1] + at, n),
                                         load_bytes(flat, base[i + 2] + at, n), load_bytes(flat, base[i + 3] + at, n))
            c = (t * _QUADS + quad) * 64
            a0 = dot_s8s8(a0, r0, load_i32(codes, c, 16))
            a1 = dot_s8s8(a1, r1, load_i32(codes, c + 16, 16))
            a2 = dot_s8s8(a2, r2, load_i32(codes, c + 32, 16))
            a3 = dot_s8s8(a3, r3, load_i32(codes, c + 48, 16))
        at = (t * 8 + g) * 64
        _add_scaled(acc, at, a0, s0)
        _add_scaled(acc, at + 16, a1, s1)
        _add_scaled(acc, at + 32, a2, s2)
        _add_scaled(acc, at + 48, a3, s3)


@njit(inline="always", **OPTIONS)
def _add_scaled(acc, at, sums, scale):
    store_f32(acc, at, fma(to_f32(sums), scale, load_f32(acc, at, 16)), 16)

