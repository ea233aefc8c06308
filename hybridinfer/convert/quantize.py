"""Encode float32 weights as a GGUF type, in row chunks so temporaries stay small.

The encoders are the `gguf` package's own (`gguf.quants.quantize`), so the output is identical to what
llama.cpp's Python tooling writes, and for the K-quants, which gguf cannot encode, llama.cpp's reference
encoders ported in `k_quants.py`; chunking only bounds the memory the numpy temporaries take. Which type each
tensor gets is `outtypes.py`'s table.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from . import k_quants

CHUNK_BYTES = 32 << 20  # float32 input per quantization call


def encoded_nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block_size * type_size


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """The bytes (uint8) or values (F32/F16) to store for `values` (float32, 1-D or 2-D)."""
    if qtype == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 1:
        return _quantize(values, qtype)
    rows = max(1, CHUNK_BYTES // (values.shape[1] * 4))
    first = _quantize(values[:rows], qtype)
    out = np.empty((values.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:rows] = first
    for begin in range(rows, values.shape[0], rows):
        out[begin:begin + rows] = _quantize(values[begin:begin + rows], qtype)
    return out


def _quantize(values: np.ndarray, qtype: T) -> np.ndarray:
    if qtype in k_quants.QUANTIZERS:
        return k_quants.quantize(values, qtype)
    return quants.quantize(values, qtype)
