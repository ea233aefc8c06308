"""The CPU KV cache's storage types, as llama.cpp's -ctk/--cache-type-k and -ctv/--cache-type-v name them, declared
once: what each stores per value, its bytes, and how its arrays are made.

  f32    float32
  f16    IEEE half, stored as int16 bits (numba has no float16 arithmetic on the CPU; `simd_half.half_bits` writes
         them, `simd_half.as_float32` reads them); llama.cpp's default, and this one's
  q8_0   GGML's Q8_0: blocks of 32 int8 values with one float16 scale each (34 bytes per 32 values), the quants and
         the scales in two arrays

The attention kernels dispatch on the arrays' dtypes (`kernels/kv_rows.py`): a run compiles only its types'.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np

from ..errors import HybridInferError
from ..kernels.kv_rows import Q8_BLOCK


@dataclass(frozen=True)
class KVType:
    name: str  # llama.cpp's
    element: type  # the numpy dtype of a stored value
    block: int = 0  # values per scale (int16 float16 bits); 0: no scales

    @property
    def bytes_per_value(self) -> float:
        return np.dtype(self.element).itemsize + (2 / self.block if self.block else 0)

    def new(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(values, scales) for `shape` (..., head_dim) values: values of that shape, scales (..., head_dim / block)
        (no scales: (..., 0)); never written here (`untouched`)."""
        scales = shape[:-1] + (shape[-1] // self.block if self.block else 0,)
        return untouched(shape, self.element), untouched(scales, np.int16)


def untouched(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized array of anonymous memory in 4 KiB pages, each resident only once written. np.empty asks the
    kernel for 2 MiB huge pages (madvise), of which one written value makes all resident: one per layer and KV head
    of the cache, all of SmolLM2's at -c 4096 (its heads' 4096 positions fill 0.5 to 1 MiB)."""
    count = math.prod(shape)
    memory = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype, count).reshape(shape)


KV_TYPES = {t.name: t for t in (KVType("f32", np.float32), KVType("f16", np.int16),
                                 KVType("q8_0", np.int8, Q8_BLOCK))}
DEFAULT_KV_TYPE = "f16"  # llama.cpp's


def kv_type(name: str | None, flag: str, head_dim: int | None = None) -> KVType:
    """The type `name` (None: the default) given to `flag`; with `head_dim`, refused if a block does not divide it."""
    chosen = KV_TYPES.get(name or DEFAULT_KV_TYPE)
    if chosen is None:
        raise HybridInferError(f"unknown KV cache type {name!r} for {flag}; choose one of {', '.join(KV_TYPES)}")
    if head_dim is not None and chosen.block and head_dim % chosen.block:
        raise HybridInferError(f"{flag} {chosen.name} stores blocks of {chosen.block} values, but this model's heads "
                               f"have {head_dim}: use {flag} f16")
    return chosen
