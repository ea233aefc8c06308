"""The tile helpers of `quant_dot.py` for the K-quants (Q4_K, Q5_K, Q6_K in the K tiles of `packed.py`): a tile of
16 blocks of 32 is two super-blocks, each block with its exact scale d sc_b (and minimum -dmin m_b), formed here
from the tile header's byte codes and its two float32 super-block factors. The quants are read as Q4_x / Q5_x
quants are; Q6_K adds a group of sixth bits and keeps one scale per 16 elements: a block's low nibbles are its
elements 0..15 and its high nibbles 16..31, added up apart. Same signatures as `quant_dot`'s helpers (see
`_q8_int8_tile` there); reference twin: `reference.matvec` over gguf's decoded values.
"""

from __future__ import annotations

from numba import njit

from .packed_k import K_FACTORS
from .row_tiles import OPTIONS, unit_offsets
from .simd_bits import (five_bit_quants, load_s8_as_i32, mul_i32, six_bit_quants, splat_bytes,
                        super_block_factors)
from .simd_dot import dot_u8s8
from .simd_float import add, fma, mul, splat_f32, to_f32, zeros_f32
from .simd_int import add_i32, high_nibbles, low_nibbles, scale_i32, zeros_i32
from .simd_memory import load_bytes, load_f32, load_i32, load_s8_as_f32
from .simd_planes import byte_planes_as_f32, nibble_planes_as_f32

Q4_K_TILE, Q5_K_TILE, Q6_K_TILE = 256, 320, 384  # quant bytes of a whole tile (`QuantLayout.tile_bytes`)


@njit(inline="always", **OPTIONS)
def q4k_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """total + per block: dx (d sc (q . qx) - dmin m sum(qx))."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4
    acc0, acc1, acc2, acc3 = zeros_i32(), zeros_i32(), zeros_i32(), zeros_i32()
    header, quants = unit_offsets(start, 0, Q4_K_TILE)
    o, x = wo + quants, xo + start * 32
    for g in range(0, 4, 2):  # low nibbles pair with activation group g, high nibbles with group g + 4
        packed = load_bytes(w, o + g * n, n)
        acc0 = dot_u8s8(acc0, low_nibbles(packed), load_bytes(qx, x + g * n, n))
        acc1 = dot_u8s8(acc1, high_nibbles(packed), load_bytes(qx, x + (g + 4) * n, n))
        packed = load_bytes(w, o + (g + 1) * n, n)
        acc2 = dot_u8s8(acc2, low_nibbles(packed), load_bytes(qx, x + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high_nibbles(packed), load_bytes(qx, x + (g + 5) * n, n))
    return _k_finish(w, wo + header, width, add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3)),
                     load_f32(dx, bo + start, width), load_i32(qsum, bo + start, width), total)


@njit(inline="always", **OPTIONS)
def q5k_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """As `q4k_int8_tile` for 5-bit quants (the group after the nibbles holds their fifth bits)."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4
    acc0, acc1, acc2, acc3 = zeros_i32(), zeros_i32(), zeros_i32(), zeros_i32()
    header, quants = unit_offsets(start, 0, Q5_K_TILE)
    o, x = wo + quants, xo + start * 32
    fifth = load_bytes(w, o + 4 * n, n)
    for g in range(0, 4, 2):
        low, high = five_bit_quants(load_bytes(w, o + g * n, n), fifth, g)
        acc0 = dot_u8s8(acc0, low, load_bytes(qx, x + g * n, n))
        acc1 = dot_u8s8(acc1, high, load_bytes(qx, x + (g + 4) * n, n))
        low, high = five_bit_quants(load_bytes(w, o + (g + 1) * n, n), fifth, g + 1)
        acc2 = dot_u8s8(acc2, low, load_bytes(qx, x + (g + 1) * n, n))
        acc3 = dot_u8s8(acc3, high, load_bytes(qx, x + (g + 5) * n, n))
    return _k_finish(w, wo + header, width, add_i32(add_i32(acc0, acc1), add_i32(acc2, acc3)),
                     load_f32(dx, bo + start, width), load_i32(qsum, bo + start, width), total)


@njit(inline="always", **OPTIONS)
def _k_finish(w, at, width, acc, block_dx, block_qsum, total):
    """total + dx (d (sc acc) - dmin (m qsum)) per block, the codes and factors from the K header at w[at:]; the
    code products in int32 (exact), so that each token's arithmetic is a product of loaded values, as Q4_1's."""
    scaled = to_f32(mul_i32(load_s8_as_i32(w, at, width), acc))
    total = fma(scaled, mul(super_block_factors(w, at + K_FACTORS), block_dx), total)
    offset = to_f32(mul_i32(load_s8_as_i32(w, at + 16, width), block_qsum))
    return fma(offset, mul(super_block_factors(w, at + K_FACTORS + 8), block_dx), total)  # factor: -dmin


@njit(inline="always", **OPTIONS)
def q6k_int8_tile(w, wo, ops, xo, bo, start, width, total):
    """total + per block: d dx (sc_lo ((q - 32) . qx over elements 0..15) + sc_hi (the same over 16..31)), q read
    unsigned (0..63) and 32 sum(qx) of each half taken off: the low half's by a dot with bytes of 32, the high
    half's as 32 qsum less it; the scale codes multiply the dots in int32."""
    qx, dx, qsum = ops[4], ops[5], ops[6]
    n = width * 4
    block_qsum = load_i32(qsum, bo + start, width)
    low0, low1, high0, high1 = zeros_i32(), zeros_i32(), scale_i32(block_qsum, -32), zeros_i32()
    low_sums = zeros_i32()  # 32 sum(qx) over elements 0..15
    thirty_two = splat_bytes(0x20202020)
    header, quants = unit_offsets(start, 0, Q6_K_TILE)
    o, x = wo + quants, xo + start * 32
    fifth, sixth = load_bytes(w, o + 4 * n, n), load_bytes(w, o + 5 * n, n)
    for g in range(0, 4, 2):
        low, high = six_bit_quants(load_bytes(w, o + g * n, n), fifth, sixth, g)
        x_low = load_bytes(qx, x + g * n, n)
        low0 = dot_u8s8(low0, low, x_low)
        low_sums = dot_u8s8(low_sums, thirty_two, x_low)
        high0 = dot_u8s8(high0, high, load_bytes(qx, x + (g + 4) * n, n))
        low, high = six_bit_quants(load_bytes(w, o + (g + 1) * n, n), fifth, sixth, g + 1)
        x_low = load_bytes(qx, x + (g + 1) * n, n)
        low1 = dot_u8s8(low1, low, x_low)
        low_sums = dot_u8s8(low_sums, thirty_two, x_low)
        high1 = dot_u8s8(high1, high, load_bytes(qx, x + (g + 5) * n, n))
    low_dot = add_i32(add_i32(low0, low1), scale_i32(low_sums, -1))
    high_dot = add_i32(add_i32(high0, high1), low_sums)
    at = wo + header
    scaled = add_i32(mul_i32(load_s8_as_i32(w, at, width), low_dot), mul_i32(load_s8_as_i32(w, at + 16, width),
                                                                            high_dot))
    return fma(to_f32(scaled), mul(super_block_factors(w, at + K_FACTORS), load_f32(dx, bo + start, width)), total)


@njit(inline="always", **OPTIONS)
def q4k_float_tile(w, wo, ops, xo, bo, start, width, total):
    """total + per block: d sc (q . x) - dmin m sum(x), float32 (nibble planes looked up in ops' table: q)."""
    table, xp, xsum = ops[1], ops[2], ops[3]
    n = width * 4
    p0, p1, p2, p3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 0, Q4_K_TILE)
    for g in range(4):
        s0, s1, s2, s3, s4, s5, s6, s7 = nibble_planes_as_f32(load_bytes(w, wo + quants + g * n, n), table)
        lo, hi = xo + start * 32 + g * n, xo + start * 32 + (g + 4) * n  # low nibbles: group g, high: g + 4
        p0 = fma(s1, load_f32(xp, hi, width), fma(s0, load_f32(xp, lo, width), p0))
        p1 = fma(s3, load_f32(xp, hi + width, width), fma(s2, load_f32(xp, lo + width, width), p1))
        p2 = fma(s5, load_f32(xp, hi + 2 * width, width), fma(s4, load_f32(xp, lo + 2 * width, width), p2))
        p3 = fma(s7, load_f32(xp, hi + 3 * width, width), fma(s6, load_f32(xp, lo + 3 * width, width), p3))
    return _k_float_finish(w, wo + header, width, add(add(p0, p1), add(p2, p3)), load_f32(xsum, bo + start, width),
                           total)


@njit(inline="always", **OPTIONS)
def _k_float_finish(w, at, width, dots, block_xsum, total):
    """total + d sc dots - dmin m sum(x) per block, the scales from the K header at w[at:]."""
    sc = mul(load_s8_as_f32(w, at, width), super_block_factors(w, at + K_FACTORS))
    minimum = mul(load_s8_as_f32(w, at + 16, width), super_block_factors(w, at + K_FACTORS + 8))  # -dmin m
    return fma(minimum, block_xsum, fma(dots, sc, total))


@njit(inline="always", **OPTIONS)
def q5k_float_tile(w, wo, ops, xo, bo, start, width, total):
    """As `q4k_float_tile` for 5-bit quants (widened as bytes)."""
    xp, xsum = ops[2], ops[3]
    n = width * 4
    p0, p1, p2, p3 = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 0, Q5_K_TILE)
    fifth = load_bytes(w, wo + quants + 4 * n, n)
    for g in range(4):
        low, high = five_bit_quants(load_bytes(w, wo + quants + g * n, n), fifth, g)
        l0, l1, l2, l3 = byte_planes_as_f32(low)
        h0, h1, h2, h3 = byte_planes_as_f32(high)
        lo, hi = xo + start * 32 + g * n, xo + start * 32 + (g + 4) * n
        p0 = fma(h0, load_f32(xp, hi, width), fma(l0, load_f32(xp, lo, width), p0))
        p1 = fma(h1, load_f32(xp, hi + width, width), fma(l1, load_f32(xp, lo + width, width), p1))
        p2 = fma(h2, load_f32(xp, hi + 2 * width, width), fma(l2, load_f32(xp, lo + 2 * width, width), p2))
        p3 = fma(h3, load_f32(xp, hi + 3 * width, width), fma(l3, load_f32(xp, lo + 3 * width, width), p3))
    return _k_float_finish(w, wo + header, width, add(add(p0, p1), add(p2, p3)), load_f32(xsum, bo + start, width),
                           total)


@njit(inline="always", **OPTIONS)
def q6k_float_tile(w, wo, ops, xo, bo, start, width, total):
    """total + per block: d (sc_lo (q - 32) . x over elements 0..15 + sc_hi over 16..31), float32: q . x of each
    half, less 32 times the half's sum of x (the low half's added up here, the high half's as sum(x) less it)."""
    xp, xsum = ops[2], ops[3]
    n = width * 4
    p0, p1, p2, p3, low_x = zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32(), zeros_f32()
    header, quants = unit_offsets(start, 0, Q6_K_TILE)
    fifth, sixth = load_bytes(w, wo + quants + 4 * n, n), load_bytes(w, wo + quants + 5 * n, n)
    for g in range(4):
        low, high = six_bit_quants(load_bytes(w, wo + quants + g * n, n), fifth, sixth, g)
        l0, l1, l2, l3 = byte_planes_as_f32(low)
        h0, h1, h2, h3 = byte_planes_as_f32(high)
        lo, hi = xo + start * 32 + g * n, xo + start * 32 + (g + 4) * n
        x0, x1 = load_f32(xp, lo, width), load_f32(xp, lo + width, width)
        x2, x3 = load_f32(xp, lo + 2 * width, width), load_f32(xp, lo + 3 * width, width)
        low_x = add(low_x, add(add(x0, x1), add(x2, x3)))
        p0 = fma(l1, x1, fma(l0, x0, p0))
        p1 = fma(l3, x3, fma(l2, x2, p1))
        p2 = fma(h1, load_f32(xp, hi + width, width), fma(h0, load_f32(xp, hi, width), p2))
        p3 = fma(h3, load_f32(xp, hi + 3 * width, width), fma(h2, load_f32(xp, hi + 2 * width, width), p3))
    minus_32 = splat_f32(-32.0)
    high_x = fma(low_x, splat_f32(-1.0), load_f32(xsum, bo + start, width))
    at = wo + header
    d = super_block_factors(w, at + K_FACTORS)
    total = fma(fma(low_x, minus_32, add(p0, p1)), mul(load_s8_as_f32(w, at, width), d), total)
    return fma(fma(high_x, minus_32, add(p2, p3)), mul(load_s8_as_f32(w, at + 16, width), d), total)


# Two tokens at a time (int8 activations): each token gets exactly the one-token helper's arithmetic; the second
# call reads the tile from L1.

@njit(inline="always", **OPTIONS)
def q4k_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    return (q4k_int8_tile(w, wo, ops, xo0, bo0, start, width, total0),
            q4k_int8_tile(w, wo, ops, xo1, bo1, start, width, total1))


@njit(inline="always", **OPTIONS)
def q5k_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    return (q5k_int8_tile(w, wo, ops, xo0, bo0, start, width, total0),
            q5k_int8_tile(w, wo, ops, xo1, bo1, start, width, total1))


@njit(inline="always", **OPTIONS)
def q6k_int8_pair(w, wo, ops, xo0, bo0, xo1, bo1, start, width, total0, total1):
    return (q6k_int8_tile(w, wo, ops, xo0, bo0, start, width, total0),
            q6k_int8_tile(w, wo, ops, xo1, bo1, start, width, total1))
