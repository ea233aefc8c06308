"""Row and tile helpers shared by the kernels over quantized packed rows (`cpu_quant`, `cpu_accumulate_int8`):
where a tile's scales and quants sit in a packed row (`packed.py`), and prefetching, a share per tile, the rows
a kernel reads next. All are inlined into their callers.
"""

from __future__ import annotations

from numba import njit

from .packed import TILE
from .simd_memory import prefetch_l2

OPTIONS = dict(nogil=True, fastmath=True, cache=True)  # numba options of the kernels over packed rows


@njit(inline="always", **OPTIONS)
def share_bytes(row_bytes, nb):
    """Bytes of a row prefetched per tile: the row's share of one tile, in whole cache lines."""
    return (row_bytes // ((nb + TILE - 1) // TILE) + 63) // 64 * 64


@njit(inline="always", **OPTIONS)
def prefetch_shares(w, ahead, count, start, share):
    """`prefetch_share` for the rows at w[ahead[i]:], i < count (ahead a tuple or an array)."""
    for i in range(count):
        prefetch_share(w, ahead[i], start, share)


@njit(inline="always", **OPTIONS)
def prefetch_share(w, ahead, start, share):
    """Prefetch into L2 the share of the row at w[ahead:] that matches the tile starting at block `start` (none
    if ahead < 0); never past the array's end. (Into L1, prefetched rows evict the rows being read:
    docs/cpu-decoding.md, "Kernel design choices".)"""
    if ahead >= 0:
        lo = ahead + (start // TILE) * share
        for o in range(lo, min(lo + share, w.shape[0]), 64):
            prefetch_l2(w, o)


@njit(inline="always", **OPTIONS)
def unit_offsets(start, shift, tile_bytes):
    """(header, quants) byte offsets in a packed row of the tile whose first block is `start`, for units of
    1 << shift tiles of tile_bytes quants each (see packed.py): its 32 bytes of f16 d, and its quants."""
    tile = start // TILE
    unit, sub = tile >> shift, tile & ((1 << shift) - 1)
    base = unit * (64 + (tile_bytes << shift))
    return base + 32 * sub, base + 64 + sub * tile_bytes
