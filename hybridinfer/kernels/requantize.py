"""The transpose of a quantized weight, re-quantized in its format's `transpose_type` (the registry's): the bytes
`gguf.quants.quantize(dequantize(W).T, transpose_type)` gives (its twin, which the tests compare byte for byte), in
numba. Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 stay in their own format; a K-quant's transpose becomes the 32-block format
nearest to it (Q4_K -> Q4_1, Q5_K -> Q5_1, Q6_K -> Q8_0: its rows need only be whole 32-blocks, and S3 reads only
32-block formats), from its values as gguf-py decodes them. The sparse FFN needs the down projection transposed
(`down_t`) and makes it at load, where gguf's numpy encoders were slow (load times: docs/cpu-decoding.md).

Work goes by tiles of 32 x 32 weights: the 32 blocks of one input block column and 32 input rows are decoded
(float32, as gguf decodes), then each of the tile's 32 columns is encoded as one output block, with gguf's
float32 arithmetic step by step (no fastmath: the same roundings). The f16 block scales are converted by numpy
around the kernel (numba has no float16 arithmetic).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from numba import njit, prange

from ..model_file.weight_formats import CPU_NATIVE_FORMATS, FORMATS
from .formats import FORMAT_CODE, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from .packed import BLOCK

QUANTIZED_TYPES = tuple(f.type for f in CPU_NATIVE_FORMATS if f.quantized)  # each transposed below


def transpose_quantized(raw: np.ndarray, qtype: T, shape: tuple[int, int]) -> np.ndarray:
    """raw: a (rows, cols) weight as gguf stores it; -> (cols, rows // 32 * block bytes) uint8, its transpose in
    FORMATS[qtype].transpose_type. rows and cols must be multiples of 32 (of 256 for a K-quant's cols)."""
    qtype = T(qtype)
    rows, cols = shape
    if qtype not in QUANTIZED_TYPES or rows % BLOCK or cols % FORMATS[qtype].block_size:
        raise ValueError(f"transpose_quantized takes {', '.join(t.name for t in QUANTIZED_TYPES)} weights whose rows "
                         f"are a multiple of 32 and cols of the block size, not {qtype.name} {shape}")
    fmt = FORMATS[qtype]
    if fmt.k_quant:
        return _transpose_decoded(fmt.decode(np.ascontiguousarray(raw).view(np.uint8).reshape(-1, fmt.block_bytes))
                                  .reshape(rows, cols), fmt.transpose_type)
    block_bytes, header = fmt.block_bytes, fmt.header_bytes
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, cols // BLOCK, block_bytes)
    scales = _halves(blocks, fmt.field_at("scale"))
    minimums = _halves(blocks, fmt.field_at("minimum")) if fmt.has_minimum else np.zeros((0, 0), np.float32)
    out = np.empty((cols, rows // BLOCK, block_bytes), np.uint8)
    out_scales = np.empty((cols, rows // BLOCK), np.float32)
    out_minimums = np.empty((cols, rows // BLOCK), np.float32)
    _transpose_blocks(FORMAT_CODE[qtype], blocks, scales, minimums, header, out, out_scales, out_minimums)
    return _with_fields(fmt, out, out_scales, out_minimums)


def requantized(raw: np.ndarray, qtype: T, shape: tuple[int, int]) -> np.ndarray:
    """A K-quant weight (rows, cols) as gguf stores it, re-quantized (not transposed) to its transpose_type:
    (rows, cols // 32 * block bytes) uint8."""
    fmt = FORMATS[T(qtype)]
    values = fmt.decode(np.ascontiguousarray(raw).view(np.uint8).reshape(-1, fmt.block_bytes)).reshape(shape)
    return _transpose_decoded(np.ascontiguousarray(values.T), fmt.transpose_type)


def _with_fields(fmt, out: np.ndarray, out_scales: np.ndarray, out_minimums: np.ndarray) -> np.ndarray:
    """out (cols, nb, block bytes) with its f16 header fields written from the float32 ones, as (cols, bytes)."""
    computed = {"scale": out_scales, "minimum": out_minimums}
    for field in fmt.fields:
        at = fmt.field_at(field)
        out[:, :, at:at + 2] = computed[field].astype(np.float16).view(np.uint8).reshape(out.shape[0], -1, 2)
    return out.reshape(out.shape[0], -1)


def _transpose_decoded(values: np.ndarray, target: T) -> np.ndarray:
    """The transpose of float32 values (rows, cols), encoded in the 32-block format `target`."""
    rows, cols = values.shape
    fmt = FORMATS[target]
    out = np.empty((cols, rows // BLOCK, fmt.block_bytes), np.uint8)
    out_scales = np.empty((cols, rows // BLOCK), np.float32)
    out_minimums = np.empty((cols, rows // BLOCK), np.float32)
    _encode_columns(FORMAT_CODE[target], values, fmt.header_bytes, out, out_scales, out_minimums)
    return _with_fields(fmt, out, out_scales, out_minimums)


@njit(parallel=True, cache=True)
def _encode_columns(kind, values, header, out, out_scales, out_minimums):
    """values (rows, cols) float32 -> out (cols, rows // 32, block bytes) quants and out_scales / out_minimums
    float32 d and m: block b of output row r encodes values[32 b : 32 b + 32, r]. Parallel over input row blocks."""
    rows, cols = values.shape
    for b in prange(rows // BLOCK):
        column = np.empty(BLOCK, np.float32)
        quants = np.empty(BLOCK, np.int32)
        for r in range(cols):
            for e in range(BLOCK):
                column[e] = values[BLOCK * b + e, r]
            out_scales[r, b], out_minimums[r, b] = _encode(kind, column, quants)
            _store(kind, quants, header, out[r, b])


def _halves(blocks: np.ndarray, at: int) -> np.ndarray:
    """float32 (rows, nb): the f16 stored at byte `at` of every block."""
    return np.ascontiguousarray(blocks[:, :, at:at + 2]).view(np.float16)[:, :, 0].astype(np.float32)


@njit(parallel=True, cache=True)
def _transpose_blocks(kind, blocks, scales, minimums, header, out, out_scales, out_minimums):
    """blocks (rows, nb_in, block bytes) -> out (cols, nb_out, block bytes) quants, out_scales / out_minimums
    (cols, nb_out) float32 d and m; kind: the format's code (`formats.py`). Parallel over input block columns (32
    output rows each)."""
    rows, nb_in = scales.shape
    for c in prange(nb_in):
        tile = np.empty((BLOCK, BLOCK), np.float32)  # [input row within the output block, column within block c]
        column = np.empty(BLOCK, np.float32)
        quants = np.empty(BLOCK, np.int32)
        for b in range(rows // BLOCK):
            for e in range(BLOCK):
                _decode(kind, blocks[BLOCK * b + e, c], scales[BLOCK * b + e, c],
                        minimums[BLOCK * b + e, c] if kind == Q4_1 or kind == Q5_1 else np.float32(0.0), header,
                        tile[e])
            for j in range(BLOCK):
                for e in range(BLOCK):
                    column[e] = tile[e, j]
                r = BLOCK * c + j
                out_scales[r, b], out_minimums[r, b] = _encode(kind, column, quants)
                _store(kind, quants, header, out[r, b])


@njit(cache=True)
def _decode(kind, block, d, m, header, values):
    """values (32,) = the block's weights as gguf decodes them: q * d (Q8_0), d * (q - 8) (Q4_0), d * (q - 16)
    (Q5_0), d * q + m (Q4_1, Q5_1)."""
    for j in range(BLOCK):
        if kind == Q8_0:
            values[j] = np.float32(np.int8(block[header + j])) * d
        else:
            byte = block[header + j % 16]
            nibble = np.int32(byte & 15) if j < 16 else np.int32(byte >> 4)
            if kind == Q5_0 or kind == Q5_1:  # the fifth bit: bit j of the little-endian word before the nibbles
                nibble += 16 * np.int32((block[header - 4 + j // 8] >> (j % 8)) & 1)
            if kind == Q4_0:
                values[j] = d * np.float32(nibble - 8)
            elif kind == Q5_0:
                values[j] = d * np.float32(nibble - 16)
            else:
                values[j] = d * np.float32(nibble) + m


@njit(cache=True)
def _encode(kind, values, quants):
    """gguf's encoder for one block: quants (32,) int32, and returns (d, m) as float32 (m is 0 but for Q4_1)."""
    zero = np.float32(0.0)
    if kind == Q8_0:  # d = max|x| / 127, q = roundf(x / d) (half away from zero)
        amax = zero
        for e in range(BLOCK):
            amax = max(amax, abs(values[e]))
        d = amax / np.float32(127)
        inverse = zero if d == 0 else np.float32(1) / d
        for e in range(BLOCK):
            x = values[e] * inverse
            a = abs(x)
            floored = np.floor(a)
            rounded = floored + np.floor(np.float32(2) * (a - floored))
            quants[e] = np.int32(np.sign(x) * rounded)
        return d, zero
    top = 31 if kind == Q5_0 or kind == Q5_1 else 15  # the largest quant
    if kind == Q4_0 or kind == Q5_0:  # d = (the signed value of largest magnitude, the first one) / -8 (Q5_0: -16)
        largest = values[0]
        for e in range(1, BLOCK):
            if abs(values[e]) > abs(largest):
                largest = values[e]
        centre = np.float32((top + 1) // 2)
        d = largest / -centre
        inverse = zero if d == 0 else np.float32(1) / d
        for e in range(BLOCK):
            quants[e] = min(np.int32(np.trunc(values[e] * inverse + (centre + np.float32(0.5)))), top)
        return d, zero
    high, low = values[0], values[0]  # Q4_1: d = (max - min) / 15, m = min (Q5_1: / 31)
    for e in range(1, BLOCK):
        high, low = max(high, values[e]), min(low, values[e])
    d = (high - low) / np.float32(top)
    inverse = zero if d == 0 else np.float32(1) / d
    for e in range(BLOCK):
        quants[e] = min(np.int32(np.trunc((values[e] - low) * inverse + np.float32(0.5))), top)
    return d, low


@njit(cache=True)
def _store(kind, quants, header, block):
    """The quant bytes of one block: int8 (Q8_0), or element j in the low and j + 16 in the high nibble of byte j,
    after (Q5_x) the word of fifth bits, bit j for element j."""
    if kind == Q8_0:
        for e in range(BLOCK):
            block[header + e] = np.uint8(quants[e] & 0xFF)
    else:
        for j in range(16):
            block[header + j] = np.uint8((quants[j] & 15) | ((quants[j + 16] & 15) << 4))
        if kind == Q5_0 or kind == Q5_1:
            for k in range(4):
                byte = 0
                for i in range(8):
                    byte |= ((quants[8 * k + i] >> 4) & 1) << i
                block[header - 4 + k] = np.uint8(byte)
