"""K-quant rows (Q4_K, Q5_K, Q6_K) packed for the CPU kernels: decoded to quants and 32-block scale codes, laid
out as Q4 tiles with a 64-byte header of codes and float32 super-block factors (the layout: the module doc of
`packed.py`). `pack_k_rows` writes each row's tiles in one pass over its file bytes (numba, no temporaries, so a
load's peak memory is the packed matrices alone); `pack_k_rows_reference` is its numpy twin, and `unpack_k_rows`
the inverse, back to GGUF's bytes.
"""

from __future__ import annotations

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

from ..model_file.weight_formats import FORMATS
from .tile_shape import BLOCK, TILE, aligned_empty

K_HEADER = 64  # bytes of a K tile's header: scale codes, then the super-blocks' float32 factors
K_FACTORS = 32  # where the float32 factors start in a K tile's header


def k_tile_bytes(qtype: T, width: int) -> int:
    """Bytes of a packed K tile of `width` blocks: its header, then 4 groups of nibbles and one group per bit
    above the fourth, 4 bytes a block each."""
    return K_HEADER + FORMATS[qtype].bits * width * 4



def k_row_stride(qtype: T, n_blocks: int) -> int:
    """Bytes of a packed K row of n_blocks 32-blocks (whole tiles, then a short one, then padding to 64)."""
    full, rest = divmod(n_blocks, TILE)
    used = full * k_tile_bytes(qtype, TILE) + (k_tile_bytes(qtype, rest) if rest else 0)
    return used + -used % 64


def _k_scale_pairs(packed12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sc, m) uint8 (..., 8): the 6-bit codes of Q4_K / Q5_K's 12 scale bytes (gguf's get_scale_min_k4)."""
    s = packed12.astype(np.uint8)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    m = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, m


def _k_scale_bytes(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The inverse of `_k_scale_pairs`: (..., 12) uint8."""
    return np.concatenate([(sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6),
                           (m[..., 0:4] & 63) | ((m[..., 4:8] >> 4) << 6),
                           (sc[..., 4:8] & 15) | ((m[..., 4:8] & 15) << 4)], axis=-1).astype(np.uint8)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def k_decode_blocks(qtype: T, blocks: np.ndarray):
    """GGUF K super-blocks (..., block_bytes) -> (q (..., 256) uint8 unsigned quants in element order,
    codes (..., 16) uint8: Q4_K/Q5_K the 8 sub-blocks' scale codes then their minimum codes, Q6_K the 16 int8
    scales, factors (..., 2) float32: (d, -dmin), Q6_K (d, 0))."""
    if qtype == T.Q6_K:
        ql, qh = blocks[..., 0:128], blocks[..., 128:192]
        parts = []
        for half in range(2):  # 128 elements: 4 runs of 32 (gguf's dequantize_blocks for Q6_K)
            low, high = ql[..., 64 * half:64 * half + 64], qh[..., 32 * half:32 * half + 32]
            for run in range(4):
                nibble = (low[..., 32 * (run % 2):32 * (run % 2) + 32] >> (4 * (run // 2))) & 15
                parts.append(nibble | (((high >> (2 * run)) & 3) << 4))
        factors = np.stack([_f16(blocks, 208), np.zeros(blocks.shape[:-1], np.float32)], axis=-1)
        return np.concatenate(parts, axis=-1), blocks[..., 192:208].copy(), factors
    sc, m = _k_scale_pairs(blocks[..., 4:16])
    nibbles = blocks[..., -128:]
    parts = []
    for chunk in range(4):  # 64 elements: the low nibbles of 32 bytes, then their high nibbles
        run = nibbles[..., 32 * chunk:32 * chunk + 32]
        parts += [run & 15, run >> 4]
    q = np.concatenate(parts, axis=-1)
    if qtype == T.Q5_K:  # fifth bit of element 32 r + l: bit r of qh[l]
        qh = blocks[..., 16:48]
        q |= np.concatenate([((qh >> r) & 1) << 4 for r in range(8)], axis=-1)
    factors = np.stack([_f16(blocks, 0), -_f16(blocks, 2)], axis=-1)
    return q, np.concatenate([sc, m], axis=-1), factors


def k_encode_blocks(qtype: T, q: np.ndarray, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The inverse of `k_decode_blocks`: GGUF super-blocks (..., block_bytes) uint8."""
    lead = q.shape[:-1]
    d = factors[..., 0].astype(np.float16).view(np.uint8).reshape(lead + (2,))
    runs = q.reshape(lead + (8, 32))
    if qtype == T.Q6_K:
        ql, qh = [], []
        for half in range(2):
            r = runs[..., 4 * half:4 * half + 4, :]
            ql += [(r[..., 0, :] & 15) | ((r[..., 2, :] & 15) << 4), (r[..., 1, :] & 15) | ((r[..., 3, :] & 15) << 4)]
            qh.append(sum((r[..., k, :] >> 4) << (2 * k) for k in range(4)).astype(np.uint8))
        return np.concatenate(ql + qh + [codes, d], axis=-1).astype(np.uint8)
    dmin = (-factors[..., 1]).astype(np.float16).view(np.uint8).reshape(lead + (2,))
    parts = [d, dmin, _k_scale_bytes(codes[..., :8], codes[..., 8:])]
    if qtype == T.Q5_K:
        parts.append(sum(((runs[..., r, :] >> 4) & 1) << r for r in range(8)).astype(np.uint8))
    parts += [(runs[..., 2 * c, :] & 15) | ((runs[..., 2 * c + 1, :] & 15) << 4) for c in range(4)]
    return np.concatenate(parts, axis=-1).astype(np.uint8)


def _k_tiles(qtype: T, q: np.ndarray, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Packed tiles (rows, tiles, tile bytes) of `width` blocks each from q (rows, tiles, width, 32), codes
    (rows, tiles, width, 2) (per block: scale code and minimum code, Q6_K its two scales) and factors
    (rows, tiles, 2 super-blocks, 2)."""
    rows, tiles, width = q.shape[:3]
    out = np.zeros((rows, tiles, k_tile_bytes(qtype, width)), np.uint8)
    out[:, :, 0:width] = codes[..., 0]
    out[:, :, 16:16 + width] = codes[..., 1]
    out[:, :, K_FACTORS:K_FACTORS + 16] = np.ascontiguousarray(factors.transpose(0, 1, 3, 2)).view(np.uint8).reshape(
        rows, tiles, 16)  # d of super-blocks 0, 1, then their second factor
    low, high = q[..., :16].reshape(rows, tiles, width, 4, 4), q[..., 16:].reshape(rows, tiles, width, 4, 4)
    groups = [((low & 15) | ((high & 15) << 4)).transpose(0, 1, 3, 2, 4).reshape(rows, tiles, 16 * width)]
    for bit in range(4, FORMATS[qtype].bits):  # byte (b, j): bit g of element 4g+j, bit 4+g of 16+4g+j
        g = np.arange(4, dtype=np.uint8)[:, None]
        word = ((((low >> bit) & 1) << g) | (((high >> bit) & 1) << (g + 4))).sum(axis=3, dtype=np.uint8)
        groups.append(word.reshape(rows, tiles, 4 * width))
    out[:, :, K_HEADER:] = np.concatenate(groups, axis=-1)
    return out


def _k_untiles(qtype: T, tiles: np.ndarray, width: int):
    """The inverse of `_k_tiles`: (q, codes, factors) of packed tiles (rows, tiles, tile bytes)."""
    rows, count = tiles.shape[:2]
    codes = np.stack([tiles[:, :, 0:width], tiles[:, :, 16:16 + width]], axis=-1)
    factors = np.ascontiguousarray(tiles[:, :, K_FACTORS:K_FACTORS + 16]).view(np.float32).reshape(
        rows, count, 2, 2).transpose(0, 1, 3, 2)
    n = width * 4
    nibbles = tiles[:, :, K_HEADER:K_HEADER + 4 * n].reshape(rows, count, 4, width, 4).transpose(0, 1, 3, 2, 4)
    low, high = nibbles & 15, nibbles >> 4  # (rows, tiles, width, g, j)
    for k, bit in enumerate(range(4, FORMATS[qtype].bits)):
        word = tiles[:, :, K_HEADER + (4 + k) * n:K_HEADER + (5 + k) * n].reshape(rows, count, width, 1, 4)
        g = np.arange(4, dtype=np.uint8)[:, None]
        low |= ((word >> g) & 1) << bit
        high |= ((word >> (g + 4)) & 1) << bit
    q = np.concatenate([low.reshape(rows, count, width, 16), high.reshape(rows, count, width, 16)], axis=-1)
    return q, codes, factors


def _k_block_codes(qtype: T, codes: np.ndarray) -> np.ndarray:
    """Per super-block codes (rows, n_super, 16) -> per 32-block pairs (rows, n_blocks, 2)."""
    rows, n_super = codes.shape[:2]
    if qtype == T.Q6_K:  # scales of elements 0..15 and 16..31 of each block
        return codes.reshape(rows, n_super * 8, 2)
    return codes.reshape(rows, n_super, 2, 8).transpose(0, 1, 3, 2).reshape(rows, n_super * 8, 2)


def _k_super_codes(qtype: T, pairs: np.ndarray) -> np.ndarray:
    """The inverse of `_k_block_codes`."""
    rows, nb = pairs.shape[:2]
    if qtype == T.Q6_K:
        return pairs.reshape(rows, nb // 8, 16)
    return pairs.reshape(rows, nb // 8, 8, 2).transpose(0, 1, 3, 2).reshape(rows, nb // 8, 16)


def pack_k_rows_reference(qtype: T, flat: np.ndarray, cols: int) -> np.ndarray:
    """`pack_k_rows` in numpy, the twin it is tested against: whole-array steps, with temporaries the size of
    the quants."""
    rows, nb = flat.shape[0], cols // BLOCK
    fmt = FORMATS[qtype]
    q, codes, factors = k_decode_blocks(qtype, flat.reshape(rows, cols // fmt.block_size, fmt.block_bytes))
    q, codes = q.reshape(rows, nb, BLOCK), _k_block_codes(qtype, codes)
    if factors.shape[1] % 2:  # a short last tile holds one super-block: the second's factors are zero
        factors = np.concatenate([factors, np.zeros((rows, 1, 2), np.float32)], axis=1)
    factors = factors.reshape(rows, -1, 2, 2)
    out = aligned_empty((rows, k_row_stride(qtype, nb)), np.uint8)
    full, rest = divmod(nb, TILE)
    end = full * k_tile_bytes(qtype, TILE)
    out[:, :end] = _k_tiles(qtype, q[:, :full * TILE].reshape(rows, full, TILE, BLOCK),
                            codes[:, :full * TILE].reshape(rows, full, TILE, 2), factors[:, :full]).reshape(rows, -1)
    if rest:
        last = _k_tiles(qtype, q[:, full * TILE:, None].transpose(0, 2, 1, 3), codes[:, full * TILE:, None].transpose(
            0, 2, 1, 3), factors[:, full:])
        out[:, end:end + last.shape[2]] = last[:, 0]
        end += last.shape[2]
    out[:, end:] = 0
    return out


def pack_k_rows(qtype: T, flat: np.ndarray, cols: int) -> np.ndarray:
    """Packed rows (rows, k_row_stride) of GGUF K rows flat (rows, row bytes)."""
    fmt = FORMATS[qtype]
    rows, n_super = flat.shape[0], cols // fmt.block_size
    blocks = flat.reshape(rows, n_super, fmt.block_bytes)
    if qtype == T.Q6_K:
        factors = np.stack([_f16(blocks, 208), np.zeros((rows, n_super), np.float32)], axis=-1)
    else:
        factors = np.stack([_f16(blocks, 0), -_f16(blocks, 2)], axis=-1)
    out = aligned_empty((rows, k_row_stride(qtype, cols // BLOCK)), np.uint8)
    _pack_k(flat, fmt.bits, fmt.block_bytes, factors, out, out.view(np.float32))
    return out


@numba.njit(parallel=True, nogil=True, cache=True)
def _pack_k(flat, bits, block_bytes, factors, out, out_f32):
    """out (rows, stride) uint8 and its float32 view out_f32: each row's tiles from GGUF rows flat (rows, row
    bytes) of `bits`-bit K super-blocks of `block_bytes`, their float32 factors (rows, super-blocks, 2) given."""
    n_super = flat.shape[1] // block_bytes
    n_blocks = 8 * n_super
    full_tile = K_HEADER + bits * TILE * 4
    for r in numba.prange(flat.shape[0]):
        row, target = flat[r], out[r]
        q = np.empty(256, np.int64)  # one super-block's quants
        target[:] = 0
        for s in range(n_super):
            block = row[s * block_bytes:(s + 1) * block_bytes]
            _k_decode(block, bits, q)
            tile, half = s // 2 * full_tile, s % 2
            group = 4 * min(TILE, n_blocks - s // 2 * TILE)  # bytes of one group of the tile's quants
            out_f32[r, (tile + K_FACTORS) // 4 + half] = factors[r, s, 0]
            out_f32[r, (tile + K_FACTORS + 8) // 4 + half] = factors[r, s, 1]
            for k in range(8):  # the super-block's 32-blocks: block b of the tile
                b = 8 * half + k
                target[tile + b], target[tile + 16 + b] = _k_codes(block, bits, k)
                for g in range(4):
                    for j in range(4):
                        low, high = q[32 * k + 4 * g + j], q[32 * k + 16 + 4 * g + j]
                        at = tile + K_HEADER + b * 4 + j
                        target[at + g * group] = (low & 15) | ((high & 15) << 4)
                        for bit in range(4, bits):  # byte (b, j) of the bit's group: bit g of 4g+j, 4+g of 16+4g+j
                            target[at + bit * group] |= (((low >> bit) & 1) << g) | (((high >> bit) & 1) << (g + 4))


@numba.njit(inline="always", nogil=True, cache=True)
def _k_codes(block, bits, k):
    """Block k's two header codes: Q4_K/Q5_K its 6-bit scale and minimum codes (gguf's get_scale_min_k4), Q6_K
    the int8 scales of its two halves, as bytes."""
    if bits == 6:
        return _byte(block, 192 + 2 * k), _byte(block, 193 + 2 * k)
    if k < 4:
        return _byte(block, 4 + k) & 63, _byte(block, 8 + k) & 63
    return ((_byte(block, 8 + k) & 15) | ((_byte(block, k) >> 6) << 4),
            (_byte(block, 8 + k) >> 4) | ((_byte(block, 4 + k) >> 6) << 4))


@numba.njit(inline="always", nogil=True, cache=True)
def _k_decode(block, bits, q):
    """q (256,) int64: the unsigned quants of a GGUF K super-block in element order (gguf's dequantize_blocks)."""
    if bits == 6:  # halves of 128: 4 runs of 32, a nibble of ql and two bits of qh each
        for half in range(2):
            for lane in range(32):
                low, high = _byte(block, 64 * half + lane), _byte(block, 64 * half + 32 + lane)
                top = _byte(block, 128 + 32 * half + lane)
                at = 128 * half + lane
                q[at] = (low & 15) | ((top & 3) << 4)
                q[at + 32] = (high & 15) | (((top >> 2) & 3) << 4)
                q[at + 64] = (low >> 4) | (((top >> 4) & 3) << 4)
                q[at + 96] = (high >> 4) | (((top >> 6) & 3) << 4)
        return
    quants = 16 if bits == 4 else 48  # Q5_K's qh[32] (bit r of qh[l]: element 32r + l) comes first
    for run in range(4):  # 64 elements: the low nibbles of 32 bytes, then their high nibbles
        for lane in range(32):
            byte = _byte(block, quants + 32 * run + lane)
            q[64 * run + lane] = byte & 15
            q[64 * run + 32 + lane] = byte >> 4
    if bits == 5:
        for lane in range(32):
            fifth = _byte(block, 16 + lane)
            for r in range(8):
                q[32 * r + lane] |= ((fifth >> r) & 1) << 4


@numba.njit(inline="always", nogil=True, cache=True)
def _byte(block, at):
    """block[at] as an int64 (numba's uint8-with-int64 arithmetic would give floats)."""
    return np.int64(block[at])


def unpack_k_rows(qtype: T, data: np.ndarray, cols: int) -> np.ndarray:
    """The inverse of `pack_k_rows`: GGUF K rows (rows, row bytes) of packed rows `data`."""
    rows, nb = data.shape[0], cols // BLOCK
    full, rest = divmod(nb, TILE)
    end = full * k_tile_bytes(qtype, TILE)
    q, codes, factors = _k_untiles(qtype, data[:, :end].reshape(rows, full, k_tile_bytes(qtype, TILE)), TILE)
    q, codes = q.reshape(rows, full * TILE, BLOCK), codes.reshape(rows, full * TILE, 2)
    factors = factors.reshape(rows, 2 * full, 2)
    if rest:
        lq, lc, lf = _k_untiles(qtype, data[:, end:end + k_tile_bytes(qtype, rest)][:, None], rest)
        q = np.concatenate([q, lq.reshape(rows, rest, BLOCK)], axis=1)
        codes = np.concatenate([codes, lc.reshape(rows, rest, 2)], axis=1)
        factors = np.concatenate([factors, lf.reshape(rows, 2, 2)[:, :1]], axis=1)
    n_super = cols // 256
    blocks = k_encode_blocks(qtype, q.reshape(rows, n_super, 256), _k_super_codes(qtype, codes),
                             factors[:, :n_super])
    return blocks.reshape(rows, -1)
