"""K-quant weights (Q4_K, Q5_K, Q6_K) for the tests: gguf-py has no encoder for them, so kernel tests take blocks of
random valid bytes (every code and quant bit pattern is valid, f16 super-block factors of a sane size) and test
models a plain encoder (`k_quantize`)."""

import numpy as np
from gguf import GGMLQuantizationType as T

from hybridinfer.model_file.weight_formats import FORMATS

FACTOR_AT = {T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}  # byte offsets of d (and dmin) in a super-block


def random_k_raw(rng, qtype, shape) -> np.ndarray:
    """(rows, cols // 256 * block bytes) uint8: fresh random super-blocks, d (and dmin) in [0.002, 0.02)."""
    fmt = FORMATS[qtype]
    rows, cols = shape
    blocks = rng.integers(0, 256, (rows, cols // fmt.block_size, fmt.block_bytes), dtype=np.uint8)
    for at in FACTOR_AT[qtype]:
        factor = rng.uniform(0.002, 0.02, blocks.shape[:2]).astype(np.float16)
        blocks[:, :, at:at + 2] = factor.view(np.uint8).reshape(rows, -1, 2)
    return blocks.reshape(rows, -1)


def k_quantize(values: np.ndarray, qtype) -> np.ndarray:
    """A plain K encoder for test models (rows of whole 256-blocks): per sub-block the range's scale (Q6_K: the
    largest magnitude's) and minimum, as 6-bit (Q6_K: int8) codes of the super-block's f16 factors, then each
    quant rounded. Not llama.cpp's search for the best scales: the kernels read any valid blocks alike."""
    from hybridinfer.kernels.packed_k import k_encode_blocks

    rows, cols = values.shape
    x = values.astype(np.float32).reshape(rows, cols // 256, 256)

    def f16(v):
        return v.astype(np.float16).astype(np.float32)

    def divide(a, b):
        return np.divide(a, b, out=np.zeros_like(a), where=b != 0)

    if qtype == T.Q6_K:
        sub = x.reshape(rows, -1, 16, 16)
        scale = np.abs(sub).max(axis=-1) / 31
        d = f16(scale.max(axis=-1, keepdims=True) / 127)
        codes = np.clip(np.rint(divide(scale, d)), -128, 127)
        step = d[..., None] * codes[..., None]
        q = np.clip(np.rint(divide(sub, np.broadcast_to(step, sub.shape))) + 32, 0, 63)
        factors = np.concatenate([d, np.zeros_like(d)], axis=-1)
        return k_encode_blocks(qtype, q.reshape(rows, -1, 256).astype(np.uint8), codes.astype(np.int8).view(np.uint8),
                               factors).reshape(rows, -1)
    top = 2 ** FORMATS[qtype].bits - 1
    sub = x.reshape(rows, -1, 8, 32)
    low = np.minimum(sub.min(axis=-1), 0)
    scale = (sub.max(axis=-1) - low) / top
    d, dmin = f16(scale.max(axis=-1, keepdims=True) / 63), f16(-low.min(axis=-1, keepdims=True) / 63)
    sc, m = np.clip(np.rint(divide(scale, d)), 0, 63), np.clip(np.rint(divide(-low, dmin)), 0, 63)
    step = np.broadcast_to((d * sc)[..., None], sub.shape)
    q = np.clip(np.rint(divide(sub + (dmin * m)[..., None], step)), 0, top)
    codes = np.concatenate([sc, m], axis=-1).astype(np.uint8)
    return k_encode_blocks(qtype, q.reshape(rows, -1, 256).astype(np.uint8), codes,
                           np.concatenate([d, -dmin], axis=-1)).reshape(rows, -1)


def quantize(values: np.ndarray, qtype) -> np.ndarray:
    """gguf-py's encoder, or `k_quantize` for a K-quant (gguf-py has none)."""
    from gguf import quants

    if FORMATS.get(qtype) is not None and FORMATS[qtype].k_quant:
        return k_quantize(values, qtype)
    return quants.quantize(values, qtype)


def k_sizes(raw: np.ndarray, qtype, shape) -> np.ndarray:
    """float32 (rows, cols): what a kernel adds up for each weight in size, |d| sc q + |dmin| m (Q6_K: |w|)."""
    from gguf import quants

    if qtype == T.Q6_K:
        return np.abs(quants.dequantize(np.asarray(raw), qtype)).reshape(shape)
    blocks = np.asarray(raw).reshape(-1, FORMATS[qtype].block_bytes).copy()
    blocks[:, 1] &= 0x7F  # d positive, dmin negative: value d sc q - dmin m
    blocks[:, 3] |= 0x80
    return quants.dequantize(blocks, qtype).reshape(shape)
