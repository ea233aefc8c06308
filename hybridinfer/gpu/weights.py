"""Weights on a torch device as the GGUF file's bytes, split by field (structure of arrays), never as a float
copy of a quantized matrix.

A (rows, cols) matrix of a float format keeps its values as they are stored: `values` (rows, cols) float32,
float16 or bfloat16. A quantized one keeps each of a block's fields in a tensor of its own, so that a kernel loads
the f16 scales of a tile of rows as one array and the quants as another. Blocks of 32 elements (per block):

    Q8_0  d | 32 int8 q                  value = d * q             scales (rows, cols/32), quants (rows, cols) int8
    Q4_0  d | 16 bytes of nibbles        value = d * (q - 8)       scales, quants (rows, cols/2) uint8
    Q4_1  d | m | 16 bytes               value = d * q + m         scales, mins (rows, cols/32), quants
    Q5_0  d | qh | 16 bytes              value = d * (q - 16)      + highs (rows, cols/32) int32: the qh words
    Q5_1  d | m | qh | 16 bytes          value = d * q + m

In the file, nibble byte j of a block holds element j in its low nibble and element j + 16 in its high one; bit j
of a Q5 block's qh word is element j's fifth bit. The quants of Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are interleaved at
upload for the GEMV kernels (`WORD_FORMATS`): a block's quants are W int32 words (Q4, Q5: 4 words of 8 nibbles, Q8_0:
8 words of 4 bytes), and field p of word i (bits 4p.. or 8p..) holds element W * p + i, so that the elements of one
field across a block's words are W consecutive elements (one vector load of x per field). Same bytes per block, same
shape; Q5's qh words keep the file's order.
K-quants, super-blocks of 256 elements in 8 (Q4_K, Q5_K) or 16 (Q6_K) sub-blocks, each with its own 6-bit (or
int8) scale, as gguf.quants decodes them:

    Q4_K  d | dmin | 12 B sub-scales | 128 B nibbles        value = d * sc * q - dmin * m   (q 0..15)
    Q5_K  d | dmin | 12 B sub-scales | 32 B qh | 128 B      value = d * sc * q - dmin * m   (q 0..31)
    Q6_K  128 B ql | 64 B qh | 16 int8 scales | d           value = d * sc * (q - 32)       (q 0..63)

    scales (rows, cols/256) f16 d, mins the same dmin, sub_scales (rows, cols/256 * 12) uint8 or (.., * 16) int8,
    highs (rows, cols/256 * 32 or 64) uint8, quants (rows, cols/2) uint8.

Element e of a Q4_K / Q5_K super-block is in sub-block s = e // 32: its nibble is byte 32 (e // 64) + e % 32 (low
nibble for even s), its fifth bit bit s of qh byte e % 32; sub-block s's (sc, m) are 6 bits packed in the 12 bytes
(s < 4: the low 6 bits of bytes s and s + 4; else the nibbles of byte s + 4 with the top 2 bits of bytes s - 4 and
s). Element e of a Q6_K one, e = 128 h + r: its low 4 bits are in ql byte 64 h + r % 64 (high nibble for r >= 64),
its top 2 in qh byte 32 h + r % 32 (bits 2 (r // 32) and up), its scale is sub_scales[e // 16].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..errors import HybridInferError
from ..model_file.weight_formats import GPU_NATIVE_FORMATS, GPU_NATIVE_TYPES, WeightFormat

CHUNK_ELEMENTS = 1 << 24  # the most elements a torch twin dequantizes at once
WORD_FORMATS = {T.Q4_0: 4, T.Q4_1: 4, T.Q5_0: 4, T.Q5_1: 4, T.Q8_0: 8}  # interleaved (module doc) -> words a block
FIELD_NAMES = ("values", "scales", "mins", "highs", "sub_scales", "quants")
GPU_FORMATS = {f.type: f for f in GPU_NATIVE_FORMATS}

# the K-quants' super-blocks, field by field in byte order: (DeviceMatrix field, bytes, stored type) (module doc)
K_QUANT_LAYOUTS = {
    T.Q4_K: (("scales", 2, np.float16), ("mins", 2, np.float16), ("sub_scales", 12, np.uint8),
             ("quants", 128, np.uint8)),
    T.Q5_K: (("scales", 2, np.float16), ("mins", 2, np.float16), ("sub_scales", 12, np.uint8), ("highs", 32, np.uint8),
             ("quants", 128, np.uint8)),
    T.Q6_K: (("quants", 128, np.uint8), ("highs", 64, np.uint8), ("sub_scales", 16, np.int8),
             ("scales", 2, np.float16)),
}


def _byte_ranges(layout) -> dict[str, tuple[int, int, type]]:
    ends = np.cumsum([size for _, size, _ in layout])
    return {name: (int(end) - size, int(end), kind) for (name, size, kind), end in zip(layout, ends)}


K_QUANT_FIELDS = {qtype: _byte_ranges(layout) for qtype, layout in K_QUANT_LAYOUTS.items()}


def block_fields(fmt: WeightFormat) -> dict[str, tuple[int, int, type]]:
    """A quantized format's block as DeviceMatrix fields: name -> (first byte, end byte, stored numpy type)."""
    if fmt.type in K_QUANT_FIELDS:
        return K_QUANT_FIELDS[fmt.type]
    fields = {"scales": (fmt.field_at("scale"), fmt.field_at("scale") + 2, np.float16)}
    if fmt.has_minimum:
        fields["mins"] = (fmt.field_at("minimum"), fmt.field_at("minimum") + 2, np.float16)
    if fmt.high_bits:
        fields["highs"] = (2 * len(fmt.fields), fmt.header_bytes, np.int32)  # the qh word
    fields["quants"] = (fmt.header_bytes, fmt.block_bytes, np.int8 if fmt.bits == 8 else np.uint8)
    return fields


@dataclass
class DeviceMatrix:
    """A (rows, cols) weight in GGUF's format `qtype`, its fields on one torch device (see the module doc)."""

    qtype: T
    rows: int
    cols: int
    values: torch.Tensor | None = None  # F32/F16/BF16: (rows, cols) float32 / float16 / bfloat16
    scales: torch.Tensor | None = None  # quantized: (rows, blocks) float16, each block's d
    mins: torch.Tensor | None = None  # Q4_1, Q5_1: (rows, blocks) float16 m; Q4_K, Q5_K: dmin
    highs: torch.Tensor | None = None  # Q5_0, Q5_1: (rows, blocks) int32 qh words; Q5_K, Q6_K: qh bytes (uint8)
    sub_scales: torch.Tensor | None = None  # K-quants: their sub-blocks' scales, as stored (uint8 / int8)
    quants: torch.Tensor | None = None  # Q8_0: (rows, cols) int8; else (rows, cols // 2) uint8 nibbles

    @property
    def nbytes(self) -> int:
        """The matrix's GGUF bytes: rows * blocks * block bytes if quantized, rows * cols * itemsize for floats."""
        fields = (getattr(self, name) for name in FIELD_NAMES)
        return sum(t.numel() * t.element_size() for t in fields if t is not None)

    @property
    def device(self) -> torch.device:
        return (self.values if self.values is not None else self.quants).device

    @property
    def quantized(self) -> bool:
        return GPU_FORMATS[self.qtype].quantized


def device_matrix(raw: np.ndarray, qtype, shape: tuple[int, int], device: torch.device | str,
                  rows: np.ndarray | None = None) -> DeviceMatrix:
    """The (rows, cols) = `shape` weight whose GGUF bytes are `raw` (any dtype, as the gguf reader exposes it), on
    `device`; `rows` (int64 indices, may be empty) takes only those rows, in that order. The fields are always fresh
    copies: the file's memory map is never shared or written."""
    qtype = T(qtype)
    n, cols = (int(s) for s in shape)
    if qtype not in GPU_NATIVE_TYPES:
        raise HybridInferError(f"the GPU kernels read {', '.join(t.name for t in GPU_NATIVE_TYPES)}, not "
                               f"{qtype.name}; re-quantize the model to one of them")
    fmt = GPU_FORMATS[qtype]
    flat = np.ascontiguousarray(raw).view(np.uint8)
    if n == 0:  # no rows: nothing to infer the row length from
        flat = flat.reshape(0, cols // fmt.block_size * fmt.block_bytes)
    else:
        flat = flat.reshape(n, -1)
    if rows is not None:
        flat = flat[np.asarray(rows, dtype=np.int64)]
    taken = flat.shape[0]
    if not fmt.quantized:
        stored = np.dtype(f"i{fmt.block_bytes}")  # the values' bits, viewed as the torch type below
        _check_row_bytes(flat, cols * fmt.block_bytes, qtype)
        values = torch.from_numpy((flat if rows is not None else flat.copy()).view(stored))
        return DeviceMatrix(qtype, taken, cols, values=values.view(getattr(torch, fmt.value_type)).to(device))
    if cols % fmt.block_size:
        raise HybridInferError(f"{qtype.name} rows must hold whole {fmt.block_size}-element blocks (cols {cols})")
    n_blocks = cols // fmt.block_size
    _check_row_bytes(flat, n_blocks * fmt.block_bytes, qtype)
    blocks = flat.reshape(taken, n_blocks, fmt.block_bytes)

    def field(name: str, start: int, stop: int, dtype) -> torch.Tensor:
        part = blocks[:, :, start:stop]
        if qtype in WORD_FORMATS and name == "quants":
            part = interleave(part, qtype)
        part = np.ascontiguousarray(part).reshape(taken, n_blocks * (stop - start))
        return torch.from_numpy(part.view(dtype)).to(device)

    return DeviceMatrix(qtype, taken, cols, **{name: field(name, *where) for name, where in block_fields(fmt).items()})


def element_of_field(qtype: T) -> np.ndarray:
    """(W, fields) int64: the block element that field p of word i holds in the interleaved layout (module doc)."""
    words = WORD_FORMATS[qtype]
    fields = 32 // words
    return words * np.arange(fields)[None, :] + np.arange(words)[:, None]


def stored_element_order(qtype: T) -> np.ndarray:
    """(32,) int64: the block element at each position of an interleaved block's stored order, its bytes in order
    (Q8_0) or its 16 bytes' low nibbles, then their high nibbles (Q4: byte 4i + k of word i holds fields 2k and
    2k + 1)."""
    if qtype == T.Q8_0:
        return element_of_field(qtype).reshape(-1)
    by_byte = element_of_field(qtype).reshape(4, 4, 2)  # [word i, byte k, low / high nibble]
    return np.concatenate([by_byte[..., 0].reshape(-1), by_byte[..., 1].reshape(-1)])


@lru_cache(maxsize=64)
def _stored_columns(qtype: T, cols: int) -> np.ndarray:
    blocks = np.arange(cols // 32, dtype=np.int64)[:, None] * 32
    return (blocks + stored_element_order(qtype)[None, :]).reshape(-1)


def stored_columns(m: DeviceMatrix) -> torch.Tensor | None:
    """(cols,) int64 on m's device: the element column that each column of `dequantize_rows(m, element_order=False)`
    holds; None when that is the element order (every format but `WORD_FORMATS`)."""
    if m.qtype not in WORD_FORMATS:
        return None
    return torch.from_numpy(_stored_columns(m.qtype, m.cols)).to(m.device)


def interleave(quants: np.ndarray, qtype: T) -> np.ndarray:
    """(.., quant bytes) of blocks in the file's order -> the same shape in the interleaved layout (module doc)."""
    if qtype == T.Q8_0:
        return quants[..., element_of_field(qtype).reshape(-1)]
    elements = np.concatenate([quants & 15, quants >> 4], axis=-1)  # (.., 32) nibbles in element order
    stored = stored_element_order(qtype)
    return elements[..., stored[:16]] | (elements[..., stored[16:]] << 4)


def take_rows(m: DeviceMatrix, index: torch.Tensor) -> DeviceMatrix:
    """The rows `index` (int64 on m's device) of `m`, as a new DeviceMatrix (copies only those rows' bytes)."""
    pick = {name: getattr(m, name)[index] if getattr(m, name) is not None else None for name in FIELD_NAMES}
    return DeviceMatrix(m.qtype, int(index.shape[0]), m.cols, **pick)


def dequantize_rows(m: DeviceMatrix, start: int = 0, stop: int | None = None,
                    element_order: bool = True) -> torch.Tensor:
    """float32 (stop - start, cols) values of rows start..stop-1, on m's device (computed as gguf.quants does).

    element_order False: the columns of an interleaved format (`WORD_FORMATS`) come in its stored order instead,
    column j holding element `stored_columns(m)[j]` (no permutation: the torch twins permute the vector instead)."""
    stop = m.rows if stop is None else min(stop, m.rows)
    if m.values is not None:
        return m.values[start:stop].to(torch.float32)
    fmt = GPU_FORMATS[m.qtype]
    n, n_blocks = stop - start, m.cols // fmt.block_size

    def rows_of(t: torch.Tensor) -> torch.Tensor:  # the field's rows start..stop-1 as (n, n_blocks, per block)
        return t[start:stop].reshape(n, n_blocks, t.shape[1] // n_blocks)

    d = rows_of(m.scales).to(torch.float32)
    if m.qtype in K_QUANT_FIELDS:
        values = _k_quant_values(m.qtype, d, rows_of(m.quants), None if m.mins is None else rows_of(m.mins),
                                 None if m.highs is None else rows_of(m.highs), rows_of(m.sub_scales))
        return values.reshape(n, m.cols)
    if element_order:
        q = _interleaved_quants(rows_of(m.quants), m.qtype)
    elif m.qtype == T.Q8_0:
        q = rows_of(m.quants).to(torch.float32)  # (n, blocks, 32), stored order
    else:  # Q4's, Q5's stored order, split into nibbles while still 8-bit
        packed = rows_of(m.quants)
        q = torch.cat([packed & 15, packed >> 4], dim=-1).to(torch.float32)
    if m.highs is not None:  # Q5: bit e of qh is element e's fifth bit
        elements = np.arange(32) if element_order else stored_element_order(m.qtype)
        q += 16 * _bits(rows_of(m.highs), torch.from_numpy(elements).to(q.device))
    if m.qtype == T.Q8_0:
        return q.mul_(d).reshape(n, m.cols)
    if fmt.has_minimum:
        return q.mul_(d).add_(rows_of(m.mins).to(torch.float32)).reshape(n, m.cols)
    return q.sub_(16 if fmt.high_bits else 8).mul_(d).reshape(n, m.cols)


def _interleaved_quants(quants: torch.Tensor, qtype: T) -> torch.Tensor:
    """(n, blocks, quant bytes) of interleaved blocks -> (n, blocks, 32) float32 quants in element order.

    The module doc's layout: byte k of word i holds field k of Q8_0 (element 8k + i), or fields 2k (low nibble)
    and 2k + 1 (high nibble) of Q4 and Q5 (elements 8k + i and 8k + 4 + i): strided copies of the bytes, still 8-bit,
    put every element in place before the one conversion to float32.
    """
    n, n_blocks = quants.shape[:2]
    by_field = quants.reshape(n, n_blocks, WORD_FORMATS[qtype], 4).transpose(-1, -2)  # [.., k, i]: word i's byte k
    if qtype == T.Q8_0:
        return by_field.to(torch.float32, memory_format=torch.contiguous_format).reshape(n, n_blocks, 32)
    nibbles = torch.empty((n, n_blocks, 4, 2, 4), dtype=torch.uint8, device=quants.device)  # [.., k, half, i]
    torch.bitwise_and(by_field, 15, out=nibbles[..., 0, :])
    torch.bitwise_right_shift(by_field, 4, out=nibbles[..., 1, :])
    return nibbles.reshape(n, n_blocks, 32).to(torch.float32)


def _k_quant_values(qtype: T, d, quants, dmin, highs, sub_scales) -> torch.Tensor:
    """(n, blocks, 256) float32 values of K-quant super-blocks: d (n, blocks, 1) float32, the other fields as
    stored, (n, blocks, bytes) (the module doc)."""
    n, n_blocks = d.shape[:2]
    if qtype == T.Q6_K:
        low = _nibbles(quants.reshape(n, n_blocks, 2, 64))  # (.., h, 128): r = 64 (high nibble) + byte
        top = _bits(highs.reshape(n, n_blocks, 2, 1, 32), torch.tensor([0, 2, 4, 6], device=d.device)[:, None], 3)
        q = (low + 16 * top.reshape(n, n_blocks, 2, 128)).reshape(n, n_blocks, 16, 16) - 32
        scale = d[..., None] * sub_scales.to(torch.float32).reshape(n, n_blocks, 16, 1)
        return (scale * q.to(torch.float32)).reshape(n, n_blocks, 256)
    sc, mn = _k_scales_and_mins(sub_scales.to(torch.int32))  # (n, blocks, 8) each
    q = _nibbles(quants.reshape(n, n_blocks, 4, 32)).reshape(n, n_blocks, 8, 32)  # sub-block s: chunk s // 2
    if highs is not None:
        q = q + 16 * _bits(highs.reshape(n, n_blocks, 1, 32), torch.arange(8, device=d.device)[:, None])
    scale = (d * sc.to(torch.float32))[..., None]
    offset = (dmin.to(torch.float32) * mn.to(torch.float32))[..., None]
    return (scale * q.to(torch.float32) - offset).reshape(n, n_blocks, 256)


def _k_scales_and_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(.., 12) int32 packed 6-bit values -> (sc, m), (.., 8) int32 each, sub-blocks 0..7 (the module doc)."""
    d, m, both = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([d & 63, (both & 15) | ((d >> 2) & 48)], dim=-1)
    mn = torch.cat([m & 63, (both >> 4) | ((m >> 2) & 48)], dim=-1)
    return sc, mn


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(.., k) uint8 -> (.., 2k) int32: the k low nibbles, then the k high ones."""
    packed = packed.to(torch.int32)
    return torch.cat([packed & 15, packed >> 4], dim=-1)


def _bits(words: torch.Tensor, shifts: torch.Tensor, mask: int = 1) -> torch.Tensor:
    """(words >> shifts) & mask, broadcast, in int32 (qh words are int32 views of uint32: & drops the sign)."""
    return (words.to(torch.int32) >> shifts.to(torch.int32)) & mask


def _check_row_bytes(flat: np.ndarray, expected: int, qtype: T) -> None:
    if flat.shape[1] != expected:
        raise HybridInferError(f"{flat.shape[1]} bytes per row, expected {expected} for a {qtype.name} row")
