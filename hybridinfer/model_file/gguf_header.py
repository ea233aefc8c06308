"""Read a GGUF header (metadata and tensor directory) from a memory map, checking every length against the file.

The `gguf` package's reader trusts the file: an array claiming 2^31 items makes it loop past the end while
memory grows, a string that is not UTF-8 raises outside its error handling, and it walks every array item
in Python (a second per SmolLM2 vocabulary). This walker bounds each count by the bytes that remain before
reading, decodes number arrays in one numpy call, and raises `HeaderError` (one line naming the key or the
tensor) for anything a well-formed file cannot contain: unknown types, nested arrays, duplicate keys or
tensors, invalid UTF-8, bad alignment, tensors that overlap, are misaligned or run past the end of the file.
`tests/test_gguf_file.py` checks it against the `gguf` package's reader on real files.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.constants import GGML_QUANT_SIZES

SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

SCALAR_DTYPES = {
    GGUFValueType.UINT8: np.dtype("<u1"), GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"), GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"), GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"), GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"), GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
# tensor element types the `gguf` reader exposes as typed arrays; every other type is its raw bytes (uint8)
TYPED_TENSORS = {
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64,
}


class HeaderError(ValueError):
    """The header cannot be from a well-formed GGUF file; the message says where."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF order, fastest dimension first (ne0, ne1, ...)
    offset: int  # from the start of the file
    n_bytes: int


@dataclass(frozen=True)
class Header:
    version: int
    metadata: dict[str, Any]  # plain Python values; arrays are lists
    value_types: dict[str, tuple[GGUFValueType, ...]]  # (type,) or (ARRAY, item type)
    tensors: list[TensorInfo]
    data_offset: int


class _Cursor:
    """Reads little-endian values from `buffer` at `pos`, refusing any read past its end."""

    def __init__(self, buffer, pos: int):
        self.buffer, self.pos, self.size = buffer, pos, len(buffer)

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n_bytes: int, what: str) -> int:
        """Advance past `n_bytes`; return where they start."""
        if n_bytes < 0 or n_bytes > self.remaining():
            raise HeaderError(f"{what} needs {n_bytes} bytes at byte {self.pos} but the file ends at {self.size}")
        start = self.pos
        self.pos += n_bytes
        return start

    def scalar(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buffer, start)[0]

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        start = self.take(length, f"{what} ({length} bytes of text)")
        try:
            return bytes(self.buffer[start:start + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderError(f"{what} is not valid UTF-8 text") from None


def read_header(buffer) -> Header:
    """Parse the header of the GGUF (or PowerInfer `PWRI`) file whose bytes are `buffer` (an mmap or bytes)."""
    cursor = _Cursor(buffer, 4)  # the caller checked the magic
    version = cursor.scalar("<I", "the version")
    if version not in SUPPORTED_VERSIONS:
        hint = " (a big-endian file?)" if version & 0xFFFF == 0 else ""
        raise HeaderError(f"GGUF version {version} is not supported (versions 2 and 3 are){hint}")
    n_tensors = cursor.scalar("<Q", "the tensor count")
    n_keys = cursor.scalar("<Q", "the metadata count")
    # every entry takes at least 13 bytes (key length, a 1-byte key, type); every tensor at least 24
    _check_count(n_keys, 13, cursor, "metadata entries")
    _check_count(n_tensors, 24, cursor, "tensors")
    metadata, value_types = {}, {}
    for index in range(n_keys):
        key = cursor.string(f"metadata key #{index}")
        if key in metadata:
            raise HeaderError(f"metadata key {key} appears twice")
        value_types[key], metadata[key] = _read_value(cursor, key)
    alignment = _alignment(metadata, value_types)
    infos = [_read_tensor_info(cursor, index) for index in range(n_tensors)]
    data_offset = -(-cursor.pos // alignment) * alignment
    tensors = _place_tensors(infos, data_offset, alignment, len(buffer))
    return Header(version, metadata, value_types, tensors, data_offset)


def _check_count(count: int, min_bytes: int, cursor: _Cursor, what: str) -> None:
    if count * min_bytes > cursor.remaining():
        raise HeaderError(f"the header claims {count} {what}, more than the {cursor.remaining()} bytes left can hold")


def _value_type(raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise HeaderError(f"metadata {key} has unknown value type {raw}") from None


def _read_value(cursor: _Cursor, key: str) -> tuple[tuple[GGUFValueType, ...], Any]:
    kind = _value_type(cursor.scalar("<I", f"the type of metadata {key}"), key)
    if kind == GGUFValueType.STRING:
        return (kind,), cursor.string(f"metadata {key}")
    if kind in SCALAR_DTYPES:
        dtype = SCALAR_DTYPES[kind]
        start = cursor.take(dtype.itemsize, f"metadata {key}")
        return (kind,), np.frombuffer(cursor.buffer, dtype, 1, start)[0].item()
    item = _value_type(cursor.scalar("<I", f"the item type of metadata {key}"), key)
    count = cursor.scalar("<Q", f"the length of metadata {key}")
    if item == GGUFValueType.ARRAY:
        raise HeaderError(f"metadata {key} is an array of arrays, which GGUF readers do not support")
    item_bytes = 8 if item == GGUFValueType.STRING else SCALAR_DTYPES[item].itemsize
    if count * item_bytes > cursor.remaining():
        raise HeaderError(f"metadata {key} claims {count} items, more than the {cursor.remaining()} bytes left can hold")
    if item == GGUFValueType.STRING:
        return (kind, item), [cursor.string(f"item {i} of metadata {key}") for i in range(count)]
    dtype = SCALAR_DTYPES[item]
    start = cursor.take(count * dtype.itemsize, f"metadata {key}")
    return (kind, item), np.frombuffer(cursor.buffer, dtype, count, start).tolist()


def _alignment(metadata: dict, value_types: dict) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    value = metadata["general.alignment"]
    if value_types["general.alignment"] != (GGUFValueType.UINT32,) or value == 0 or value & (value - 1):
        raise HeaderError(f"metadata general.alignment must be a uint32 power of two, got {value!r}")
    return value


def _read_tensor_info(cursor: _Cursor, index: int) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
    name = cursor.string(f"the name of tensor #{index}")
    n_dims = cursor.scalar("<I", f"the dimension count of tensor {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise HeaderError(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} are possible)")
    dims = tuple(cursor.scalar("<Q", f"the shape of tensor {name}") for _ in range(n_dims))
    raw_type = cursor.scalar("<I", f"the type of tensor {name}")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block_size, _ = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise HeaderError(f"tensor {name} has unknown type {raw_type}") from None
    if any(d == 0 or d >= 2**63 for d in dims) or math.prod(dims) >= 2**63:
        raise HeaderError(f"tensor {name} has impossible shape {list(dims)}")
    if dims[0] % block_size:
        raise HeaderError(f"tensor {name}: rows of {dims[0]} values do not split into {qtype.name} blocks of {block_size}")
    offset = cursor.scalar("<Q", f"the offset of tensor {name}")
    return name, qtype, dims, offset


def _place_tensors(infos, data_offset: int, alignment: int, file_size: int) -> list[TensorInfo]:
    """Each tensor's absolute extent, checked: unique names, aligned, inside the file, no two overlapping."""
    tensors, names = [], set()
    for name, qtype, dims, relative in infos:
        if name in names:
            raise HeaderError(f"tensor {name} appears twice")
        names.add(name)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_bytes = math.prod(dims) // block_size * type_size
        if relative % alignment:
            raise HeaderError(f"tensor {name} starts at data offset {relative}, not a multiple of the alignment {alignment}")
        start = data_offset + relative
        if start + n_bytes > file_size:
            raise HeaderError(f"tensor {name} needs bytes up to {start + n_bytes} but the file has {file_size} "
                              "(truncated?)")
        tensors.append(TensorInfo(name, qtype, dims, start, n_bytes))
    by_start = sorted(tensors, key=lambda t: t.offset)
    for before, after in zip(by_start, by_start[1:]):
        if after.offset < before.offset + before.n_bytes:
            raise HeaderError(f"tensors {before.name} and {after.name} overlap in the file")
    return tensors


def tensor_view(buffer, info: TensorInfo) -> np.ndarray:
    """A zero-copy view of one tensor's data, shaped as the `gguf` package's reader shapes it: typed arrays for
    float/int types, (..., bytes per row) uint8 for block-quantized ones; torch order, slowest dimension first."""
    shape = tuple(reversed(info.dims))
    if info.type in TYPED_TENSORS:
        dtype = np.dtype(TYPED_TENSORS[info.type])
        return np.frombuffer(buffer, dtype, info.n_bytes // dtype.itemsize, info.offset).reshape(shape)
    block_size, type_size = GGML_QUANT_SIZES[info.type]
    byte_shape = shape[:-1] + (shape[-1] // block_size * type_size,)
    return np.frombuffer(buffer, np.uint8, info.n_bytes, info.offset).reshape(byte_shape)
