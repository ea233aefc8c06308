"""Encode float32 weights as a GGUF type, in row chunks so temporaries stay small.

The encoders are the `gguf` package's own (`gguf.quants.quantize`), so the output is identical to what
llama.cpp's Python tooling writes; chunking only bounds the memory its numpy temporaries take.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from ..model_file.tensor_shapes import OUTPUT, TOKEN_EMBD

OUTTYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}
CHUNK_BYTES = 32 << 20  # float32 input per quantization call


def stored_type(name: str, shape: tuple[int, ...], outtype: T, tied: bool) -> T:
    """The type a tensor is written with: norms (1-D) stay F32, as in llama.cpp. For q4_0 files the output
    projection (or the tied embedding that serves as it) is kept at Q8_0, since logits are the most sensitive
    product. Rows whose length is not a multiple of the block size fall back to F16."""
    if len(shape) == 1 or outtype == T.F32:
        return T.F32
    if outtype == T.Q4_0 and (name == OUTPUT or (tied and name == TOKEN_EMBD)):
        outtype = T.Q8_0
    block_size = GGML_QUANT_SIZES[outtype][0]
    if shape[-1] % block_size:
        return T.F16
    return outtype


def encoded_nbytes(shape: tuple[int, ...], qtype: T) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block_size * type_size


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """The bytes (uint8) or values (F32/F16) to store for `values` (float32, 1-D or 2-D)."""
    if qtype == T.F32:
        return np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 1:
        return quants.quantize(values, qtype)
    rows = max(1, CHUNK_BYTES // (values.shape[1] * 4))
    first = quants.quantize(values[:rows], qtype)
    out = np.empty((values.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:rows] = first
    for begin in range(rows, values.shape[0], rows):
        out[begin:begin + rows] = quants.quantize(values[begin:begin + rows], qtype)
    return out
