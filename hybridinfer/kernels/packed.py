"""Weights repacked at load into the layout the CPU kernels (`cpu_quant.py`) read at memory bandwidth.

Float formats keep GGUF's row-major layout; only the element type says how to read them (numba specializes
every kernel by dtype): F32 as float32, F16 as int16 holding the IEEE half bits, BF16 as uint16 bits.
These are zero-copy views when the input is contiguous.

Quantized rows (Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1: the CPU-native formats of `model_file/weight_formats.py`) hold the
GGUF row's bytes (`nbytes` equals the file's bytes; the K-quants are decoded into tiles of their own, below),
rearranged so that 64 contiguous bytes feed one AVX-512 instruction and a row reads as one forward stream (which the
hardware prefetches; scales kept apart from their quants make long rows slower: docs/cpu-decoding.md, "Kernel design
choices"). A row is a sequence of units:

    unit = [ 64-byte header | quants of its tiles ]      row = units, then zero padding to 64 bytes
    one f16 field (d: Q8_0, Q4_0, Q5_0):  2 tiles a unit, header = f16 d of tile 0's 16 blocks | f16 d of tile 1's
    two f16 fields (d, m: Q4_1, Q5_1):    1 tile a unit,  header = f16 d of the 16 blocks | f16 m of the 16 blocks

(slots of a short last tile are zero-padded to 32 bytes). Rows, units and groups of quants all start on
64-byte boundaries, except the groups of a short last tile, so no load straddles two cache lines.

Blocks (32 elements) are grouped in tiles of 16 (the last tile may be shorter: nbt blocks). Inside a tile the
quants are stored group-major: group g, then block b, then 4 consecutive bytes j, so that 32-bit lane b of a
64-byte group belongs to block b:
    Q8_0  byte (g < 8, b, j)  =  int8 q of element 4g+j of block b
    Q4_x  byte (g < 4, b, j)  =  GGUF byte 4g+j of block b: low nibble element 4g+j, high nibble 16+4g+j
    Q5_x  as Q4_x, then a fifth group (g = 4) of the blocks' fifth bits: byte (4, b, j) holds, in bit g, the
          fifth bit of element 4g+j and, in bit 4+g, that of element 16+4g+j (the GGUF word qh with its bits
          moved, `FIFTH_BIT_SOURCES`), so that group g's fifth bits are one shift and one mask away, in place
K-quants (Q4_K, Q5_K, Q6_K): a tile of 16 blocks of 32 is two 256-element super-blocks (a short last tile, one),
one tile a unit, its quants those of Q4_x / Q5_x above, Q6_K's with a sixth group (g = 5) of the quants' sixth
bits laid out as the fifth's. The 64-byte header holds each block's exact scale and minimum as byte codes and the
super-blocks' factors as float32 (a kernel forms d * sc_b by a byte-to-float conversion and one multiply by the
factor of its lane's super-block; d * sc_b is exact in float32, not rounded to f16):
    bytes  0..15  Q4_K/Q5_K: 6-bit scale code sc_b of block b      Q6_K: int8 scale of elements 0..15 of block b
    bytes 16..31  Q4_K/Q5_K: 6-bit minimum code m_b               Q6_K: int8 scale of elements 16..31 of block b
    bytes 32..39  float32 d of super-blocks 0 and 1
    bytes 40..47  float32 -dmin of super-blocks 0 and 1 (Q6_K: zero)
so that a block's value is d sc_b q + (-dmin) m_b (Q6_K: d sc (q - 32), each half of the block with its own sc:
low nibbles are elements 0..15, high nibbles 16..31). GGUF's nibble order (a 64-element run: 32 bytes, low nibbles
elements 0..31, high nibbles 32..63) is rearranged at load; a tile is 320 / 384 / 448 bytes (Q4_K / Q5_K / Q6_K)
for 288 / 352 / 420 bytes of file (+11%, +9%, +7%: the header's 64 bytes against the file's 2 x 16 / 2 x 16 /
2 x 18 bytes of scales). S3 does not read K tiles: a K-quant's transpose is re-quantized to Q4_1 / Q5_1 / Q8_0
(`requantize.py`).
Activations follow one of two orders, both per tile (start block t0) and for Q8_0 and Q4 alike (a Q4 high
nibble of group g pairs with activation group g+4):
    `byte_element_order` (int8 activations, for vpdpbusd):  position t0*32 + (g*nbt + b)*4 + j
    `lane_element_order` (float activations and sums, one block a lane):  position t0*32 + (g*4 + j)*nbt + b
each holding the natural element (t0 + b)*32 + 4g + j.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

from ..model_file.dequantize import dequantize
from ..errors import HybridInferError
from ..model_file.gguf_file import GGUFTensor
from ..model_file.weight_formats import CPU_NATIVE_FORMATS, CPU_NATIVE_TYPES, FORMATS
from .formats import FORMAT_CODE, FORMAT_OF_CODE
from .packed_k import K_HEADER, k_row_stride, k_tile_bytes, pack_k_rows, unpack_k_rows
from .tile_shape import BLOCK, TILE, aligned_empty

# how the kernels read a float format's stored values (numba specializes every kernel by dtype)
FLOAT_DTYPES = {f.type: np.dtype(f.cpu_bits_type).type for f in CPU_NATIVE_FORMATS if not f.quantized}


class QuantLayout(NamedTuple):
    """A quantized format's packed rows as the numba kernels address them (see the module doc)."""

    minimums: int  # 1 where blocks have a minimum m (its f16s follow the scales' in a unit's header), else 0
    shift: int  # a unit holds 1 << shift tiles
    tile_bytes: int  # quant bytes of a whole tile
    groups: int  # groups of 4 quant bytes in a block
    per_byte: int  # quants a byte holds: 1 (int8) or 2 (nibbles)
    centre: int  # 2 ** (bits - 1), taken off a quant read as unsigned (an int8 with its sign bit flipped)
    high_bits: int  # groups of bits above the fourth that end a tile's quants: 1 (Q5_x, Q5_K), 2 (Q6_K), else 0


def quant_layout(code: int) -> QuantLayout:
    """The packed layout of the quantized format with kernel code `code` (zeros for a float format)."""
    fmt = FORMAT_OF_CODE[code]
    if not fmt.quantized:
        return QuantLayout(0, 0, 0, 0, 0, 0, 0)
    if fmt.k_quant:  # one tile a unit, its header K_HEADER bytes (the 64 of `unit_offsets`)
        return QuantLayout(int(fmt.type != T.Q6_K), 0, k_tile_bytes(fmt.type, TILE) - K_HEADER, 4, 2,
                           1 << (fmt.bits - 1), fmt.bits - 4)
    tiles_per_unit = 32 // (TILE * len(fmt.fields))  # the header's 32 f16 slots: each tile's fields
    high_bytes = fmt.block_size // 8 if fmt.high_bits else 0
    return QuantLayout(int(fmt.has_minimum), tiles_per_unit.bit_length() - 1, TILE * (fmt.quant_bytes + high_bytes),
                       fmt.quant_bytes // 4, fmt.block_size // fmt.quant_bytes, 1 << (fmt.bits - 1),
                       int(fmt.high_bits))


QUANT_LAYOUTS = tuple(quant_layout(code) for code in range(len(FORMAT_OF_CODE)))  # by code, as numba code reads them


@dataclass(frozen=True)
class PackedMatrix:
    """A (rows, cols) weight in kernel layout. `data` is (rows, cols) of the float dtype, or (rows, row_stride) uint8
    packed rows (see the module doc)."""

    qtype: T
    rows: int
    cols: int
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes one full matvec reads: the matrix's GGUF size (padding excluded)."""
        return self.rows * self.row_bytes

    @property
    def row_bytes(self) -> int:
        """GGUF bytes of one row."""
        if self.qtype in FLOAT_DTYPES:
            return self.cols * self.data.itemsize
        fmt = FORMATS[self.qtype]
        return self.cols // fmt.block_size * fmt.block_bytes

    @property
    def n_blocks(self) -> int:
        return self.cols // BLOCK

    @property
    def quantized(self) -> bool:
        return FORMATS[self.qtype].quantized

    @property
    def code(self) -> int:
        """FORMAT_CODE (`formats.py`) of this matrix's format."""
        return FORMAT_CODE[self.qtype]

    @property
    def raw(self) -> np.ndarray:
        """`data` as (rows, bytes) uint8, the one array type numba code takes for every format."""
        return self.data.view(np.uint8)

    def dequantize_rows(self, rows) -> np.ndarray:
        """float32 (len(rows), cols) values of the given rows, decoded back through the GGUF layout."""
        rows = np.asarray(rows, dtype=np.int64)
        return dequantize(GGUFTensor("packed", self.qtype, (len(rows), self.cols), to_gguf_bytes(self, rows)))


def pack(tensor: GGUFTensor | tuple[np.ndarray, T, tuple[int, int]]) -> PackedMatrix:
    """Repack a 2-D GGUF weight (a GGUFTensor, or (raw, qtype, (rows, cols)) as gguf stores it)."""
    if isinstance(tensor, GGUFTensor):
        raw, qtype, shape, name = tensor.raw, tensor.type, tensor.shape, tensor.name
    else:
        raw, qtype, shape = tensor
        name = "weight"
    qtype = T(qtype)
    if len(shape) != 2:
        raise HybridInferError(f"{name}: only 2-D weights can be packed for the CPU kernels (shape {shape})")
    rows, cols = (int(s) for s in shape)
    if qtype not in CPU_NATIVE_TYPES:
        raise HybridInferError(f"{name}: the CPU kernels read {', '.join(t.name for t in CPU_NATIVE_TYPES)}, "
                               f"not {qtype.name}; re-quantize the model to one of them")
    flat = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    if qtype in FLOAT_DTYPES:
        if flat.shape[1] != cols * np.dtype(FLOAT_DTYPES[qtype]).itemsize:
            raise HybridInferError(f"{name}: {flat.shape[1]} bytes per row, expected {cols} {qtype.name} values")
        return PackedMatrix(qtype, rows, cols, flat.view(FLOAT_DTYPES[qtype]))
    fmt = FORMATS[qtype]
    if cols % fmt.block_size:
        raise HybridInferError(f"{name}: {qtype.name} rows must hold whole {fmt.block_size}-element blocks "
                               f"(cols {cols})")
    expected = cols // fmt.block_size * fmt.block_bytes
    if flat.shape[1] != expected:
        raise HybridInferError(f"{name}: {flat.shape[1]} bytes per row, expected {expected} for {qtype.name}")
    if fmt.k_quant:
        return PackedMatrix(qtype, rows, cols, pack_k_rows(qtype, flat, cols))
    order = byte_order(qtype, cols // BLOCK)
    data = aligned_empty((rows, order.shape[0]), np.uint8)
    _gather_columns(flat, order, data)
    if FORMATS[qtype].high_bits:
        _move_bits(data.view(np.uint32), fifth_bit_words(qtype, cols // BLOCK), _TO_PACKED)
    return PackedMatrix(qtype, rows, cols, data)


def packed_nbytes(tensor: GGUFTensor) -> int:
    """Bytes a 2-D weight takes once loaded for the CPU kernels: a K-quant's packed tiles (module doc), F32 for a
    type they do not read (`runtime/weights.pack_any`), else the file's bytes (rows padded to 64 bytes aside)."""
    fmt = FORMATS.get(tensor.type)
    if len(tensor.shape) == 2 and (fmt is None or not fmt.cpu_native):
        return 4 * tensor.n_elements
    if len(tensor.shape) == 2 and fmt.k_quant:
        return tensor.shape[0] * k_row_stride(tensor.type, tensor.shape[1] // BLOCK)
    return tensor.n_bytes


def to_gguf_bytes(packed: PackedMatrix, rows: np.ndarray) -> np.ndarray:
    """The given rows in GGUF's own layout: (n, cols) stored floats, or (n, row_bytes) uint8 block bytes."""
    if packed.qtype in FLOAT_DTYPES:
        return packed.data[rows]
    if FORMATS[packed.qtype].k_quant:
        return unpack_k_rows(packed.qtype, packed.data[rows], packed.cols)
    order = byte_order(packed.qtype, packed.n_blocks)
    stored = order >= 0
    data = packed.data[rows]
    if FORMATS[packed.qtype].high_bits:  # the fifth bits back in GGUF's order
        _move_bits(data.view(np.uint32), fifth_bit_words(packed.qtype, packed.n_blocks), _TO_GGUF)
    gguf_rows = np.empty((len(rows), packed.row_bytes), dtype=np.uint8)
    gguf_rows[:, order[stored]] = data[:, stored]
    return gguf_rows


@lru_cache(maxsize=64)
def byte_order(qtype: T, n_blocks: int) -> np.ndarray:
    """int32 (row_stride,): packed byte i of a row is GGUF row byte order[i], or zero padding where order[i] < 0."""
    fmt, layout = FORMATS[qtype], quant_layout(FORMAT_CODE[qtype])
    block_bytes, header, groups = fmt.block_bytes, fmt.header_bytes, layout.groups
    tiles_per_unit = 1 << layout.shift
    starts = list(range(0, n_blocks, TILE))
    parts = []
    for unit in range(0, len(starts), tiles_per_unit):
        tiles = [np.arange(start, min(start + TILE, n_blocks)) for start in starts[unit:unit + tiles_per_unit]]
        slots = [(tile, fmt.field_at(field)) for tile in tiles for field in fmt.fields]  # (blocks, f16 at)
        for blocks, at in slots + [(np.zeros(0, np.int64), 0)] * (2 - len(slots)):
            parts.append((blocks[:, None] * block_bytes + at + np.arange(2)).ravel())
            parts.append(np.full(32 - 2 * len(blocks), -1))
        for blocks in tiles:
            g, b, j = np.meshgrid(np.arange(groups), blocks, np.arange(4), indexing="ij")
            parts.append((b * block_bytes + header + 4 * g + j).ravel())
            if layout.high_bits:  # the qh words, just before the nibbles in a GGUF block
                b, j = np.meshgrid(blocks, np.arange(4), indexing="ij")
                parts.append((b * block_bytes + header - 4 + j).ravel())
    used = sum(part.shape[0] for part in parts)
    parts.append(np.full(-used % 64, -1))
    order = np.concatenate(parts).astype(np.int32)
    order.setflags(write=False)
    return order


# Q5_x fifth bits: packed bit i of a block's word is bit FIFTH_BIT_SOURCES[i] of GGUF's qh (see the module doc)
FIFTH_BIT_SOURCES = np.array([4 * g + j if low else 16 + 4 * g + j for j in range(4) for low in (1, 0) for g in range(4)],
                             dtype=np.int64)
FIFTH_BIT_TARGETS = np.argsort(FIFTH_BIT_SOURCES)  # the inverse: GGUF bit i is packed bit FIFTH_BIT_TARGETS[i]


def _bit_tables(sources: np.ndarray) -> np.ndarray:
    """uint32 (4, 256): table[k, v] = the bits that byte k of a word, of value v, gives the word whose bit i is
    bit sources[i] of it (a word is then moved with four lookups)."""
    tables = np.zeros((4, 256), np.uint32)
    values = np.arange(256, dtype=np.uint32)
    for i, source in enumerate(sources):
        k, bit = divmod(int(source), 8)
        tables[k] |= ((values >> np.uint32(bit)) & np.uint32(1)) << np.uint32(i)
    return tables


_TO_PACKED, _TO_GGUF = _bit_tables(FIFTH_BIT_SOURCES), _bit_tables(FIFTH_BIT_TARGETS)


@lru_cache(maxsize=64)
def fifth_bit_words(qtype: T, n_blocks: int) -> np.ndarray:
    """int64: the 32-bit words of a packed Q5_x row that hold fifth bits (byte offset / 4)."""
    fmt = FORMATS[qtype]
    order = byte_order(qtype, n_blocks)
    words = np.flatnonzero((order >= 0) & (order % fmt.block_bytes == fmt.header_bytes - 4)) // 4
    words.setflags(write=False)
    return words


@numba.njit(parallel=True, nogil=True, cache=True)
def _move_bits(words, columns, tables):
    """Each words[r, c] for c in columns, in place, has its bits moved by `tables` (`_bit_tables`)."""
    for r in numba.prange(words.shape[0]):
        row = words[r]
        for k in range(columns.shape[0]):
            word = row[columns[k]]
            row[columns[k]] = (tables[0, word & 255] | tables[1, (word >> 8) & 255] | tables[2, (word >> 16) & 255]
                               | tables[3, word >> 24])


@lru_cache(maxsize=64)
def byte_element_order(n_blocks: int) -> np.ndarray:
    """int64 (n_blocks*32,): int8 activation position i holds natural element order[i] (see the module doc)."""
    return _element_order(n_blocks, lanes_last=False)


@lru_cache(maxsize=64)
def lane_element_order(n_blocks: int) -> np.ndarray:
    """int64 (n_blocks*32,): float activation position i holds natural element order[i] (see the module doc)."""
    return _element_order(n_blocks, lanes_last=True)


def _element_order(n_blocks: int, lanes_last: bool) -> np.ndarray:
    parts = []
    for start in range(0, n_blocks, TILE):
        blocks = np.arange(start, min(start + TILE, n_blocks))
        if lanes_last:
            g, j, b = np.meshgrid(np.arange(8), np.arange(4), blocks, indexing="ij")
        else:
            g, b, j = np.meshgrid(np.arange(8), blocks, np.arange(4), indexing="ij")
        parts.append((b * BLOCK + 4 * g + j).ravel())
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    order.setflags(write=False)
    return order


@numba.njit(parallel=True, nogil=True, cache=True)
def _gather_columns(source, order, out):
    """out[r, i] = source[r, order[i]], or 0 where order[i] < 0   source (rows, row_bytes), out (rows, len(order))."""
    for r in numba.prange(source.shape[0]):
        row = source[r]
        target = out[r]
        for i in range(order.shape[0]):
            target[i] = row[order[i]] if order[i] >= 0 else 0
