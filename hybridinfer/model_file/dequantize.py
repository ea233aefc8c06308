"""Turn a GGUF tensor into float32 numbers.

F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are decoded here directly from their block layouts (the reference twin
is `gguf.quants.dequantize`, which the tests compare against). Any other type the `gguf` package knows is
dequantized through it, with a notice, since it is slower.
"""

from __future__ import annotations

import logging

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from ..errors import HybridInferError
from .gguf_file import GGUFTensor

log = logging.getLogger(__name__)

NATIVE_TYPES = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1)
BLOCK = 32  # elements per Q8_0 / Q4_0 / Q4_1 block


def dequantize(tensor: GGUFTensor) -> np.ndarray:
    """float32 array of `tensor.shape` (a fresh copy; the memory-mapped file is never written)."""
    raw = tensor.raw
    if tensor.type == T.F32:
        values = np.array(raw, dtype=np.float32)
    elif tensor.type == T.F16:
        values = np.asarray(raw).view(np.float16).astype(np.float32)
    elif tensor.type == T.BF16:
        values = bf16_to_f32(np.asarray(raw).view(np.uint16))
    elif tensor.type in (T.Q8_0, T.Q4_0, T.Q4_1):
        blocks = np.asarray(raw).reshape(-1, _BLOCK_BYTES[tensor.type])
        values = _DECODERS[tensor.type](blocks)
    else:
        values = _dequantize_with_gguf(tensor)
    return values.reshape(tensor.shape)


def dequantize_rows(tensor: GGUFTensor, stop: int) -> np.ndarray:
    """float32 rows 0..stop-1 of a 2-D tensor, decoding only those rows' bytes."""
    rows = np.asarray(tensor.raw)[:stop]
    return dequantize(GGUFTensor(tensor.name, tensor.type, (rows.shape[0], tensor.shape[1]), rows))


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    # block: f16 scale d, 32 x int8 q; value = d * q
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    quants = blocks[:, 2:].view(np.int8).astype(np.float32)
    return scale * quants


def _nibbles(packed: np.ndarray) -> np.ndarray:
    # 16 bytes per block -> 32 values: low nibbles are elements 0..15, high nibbles elements 16..31
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    # block: f16 scale d, 16 bytes of nibbles q; value = d * (q - 8)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return scale * (_nibbles(blocks[:, 2:]) - 8.0)


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    # block: f16 scale d, f16 minimum m, 16 bytes of nibbles q; value = d * q + m
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    return scale * _nibbles(blocks[:, 4:]) + minimum


_BLOCK_BYTES = {T.Q8_0: 34, T.Q4_0: 18, T.Q4_1: 20}
_DECODERS = {T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1}


def _dequantize_with_gguf(tensor: GGUFTensor) -> np.ndarray:
    try:
        values = gguf_quants.dequantize(np.asarray(tensor.raw), tensor.type)
    except NotImplementedError:
        raise HybridInferError(
            f"tensor {tensor.name} has type {tensor.type.name}, which neither hybridinfer nor the gguf package can "
            "decode; re-quantize the model to Q8_0, Q4_0, Q4_1, F16 or BF16") from None
    log.warning("tensor %s: type %s is dequantized to F32 at load (slower; native types: %s)",
                tensor.name, tensor.type.name, ", ".join(t.name for t in NATIVE_TYPES))
    return np.asarray(values, dtype=np.float32)
