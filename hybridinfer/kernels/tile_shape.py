"""The shape every packed quantized row shares (`packed.py`, `packed_k.py`): 32-element blocks, tiles of 16 blocks
(16 lanes of 32 bits in one 512-bit register), rows starting on 64-byte boundaries."""

from __future__ import annotations

import numpy as np

BLOCK = 32  # elements per quantization block
TILE = 16  # blocks per tile: 16 lanes of 32 bits in one 512-bit register


def aligned_empty(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    """np.empty whose first element sits on an `alignment`-byte boundary (numpy only guarantees 16)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buffer = np.empty(count * dtype.itemsize + alignment, dtype=np.uint8)
    start = -buffer.ctypes.data % alignment
    return buffer[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
