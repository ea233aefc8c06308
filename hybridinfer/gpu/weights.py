"""Weights on a torch device as the GGUF file's bytes, split by field (structure of arrays), never as a float
copy of a quantized matrix.

A (rows, cols) matrix of a float format keeps its values as they are stored: `values` (rows, cols) float32,
float16 or bfloat16. A quantized one (blocks of 32 elements along a row) keeps each of a block's fields in a
tensor of its own, so that a kernel loads the f16 scales of a tile of rows as one array and the quants as another:

    Q8_0  block = f16 d | 32 int8 q              value = d * q         scales (rows, cols/32), quants (rows, cols) int8
    Q4_0  block = f16 d | 16 bytes of nibbles    value = d * (q - 8)   scales, quants (rows, cols/2) uint8
    Q4_1  block = f16 d | f16 m | 16 bytes        value = d * q + m     scales, mins (rows, cols/32), quants

Q4 quants keep GGUF's byte order: block b's 16 bytes sit at [16b, 16b+16) of a row, and byte j holds element
32b+j in its low nibble and element 32b+16+j in its high nibble.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from ..errors import HybridInferError
from ..model_file.weight_formats import FORMATS, GPU_NATIVE_TYPES

BLOCK = 32  # elements per quantization block
CHUNK_ELEMENTS = 1 << 24  # the most elements a torch twin dequantizes at once


@dataclass
class DeviceMatrix:
    """A (rows, cols) weight in GGUF's format `qtype`, its fields on one torch device (see the module doc)."""

    qtype: T
    rows: int
    cols: int
    values: torch.Tensor | None = None  # F32/F16/BF16: (rows, cols) float32 / float16 / bfloat16
    scales: torch.Tensor | None = None  # quantized: (rows, cols // 32) float16, each block's d
    mins: torch.Tensor | None = None  # Q4_1: (rows, cols // 32) float16, each block's m
    quants: torch.Tensor | None = None  # Q8_0: (rows, cols) int8; Q4_0/Q4_1: (rows, cols // 2) uint8

    @property
    def nbytes(self) -> int:
        """The matrix's GGUF bytes: rows * cols/32 * block bytes if quantized, rows * cols * itemsize for floats."""
        fields = (self.values, self.scales, self.mins, self.quants)
        return sum(t.numel() * t.element_size() for t in fields if t is not None)

    @property
    def device(self) -> torch.device:
        return (self.values if self.values is not None else self.quants).device

    @property
    def quantized(self) -> bool:
        return FORMATS[self.qtype].quantized


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
    fmt = FORMATS[qtype]
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
    if cols % BLOCK:
        raise HybridInferError(f"{qtype.name} rows must hold whole 32-element blocks (cols {cols})")
    n_blocks = cols // BLOCK
    _check_row_bytes(flat, n_blocks * fmt.block_bytes, qtype)
    blocks = flat.reshape(taken, n_blocks, fmt.block_bytes)

    def field(start: int, stop: int, dtype) -> torch.Tensor:
        part = np.ascontiguousarray(blocks[:, :, start:stop]).reshape(taken, n_blocks * (stop - start))
        return torch.from_numpy(part.view(dtype)).to(device)

    def f16_field(name: str) -> torch.Tensor:
        return field(fmt.field_at(name), fmt.field_at(name) + 2, np.float16)

    return DeviceMatrix(qtype, taken, cols, scales=f16_field("scale"),
                        mins=f16_field("minimum") if fmt.has_minimum else None,
                        quants=field(fmt.header_bytes, fmt.block_bytes, np.int8 if fmt.bits == 8 else np.uint8))


def take_rows(m: DeviceMatrix, index: torch.Tensor) -> DeviceMatrix:
    """The rows `index` (int64 on m's device) of `m`, as a new DeviceMatrix (copies only those rows' bytes)."""
    pick = {name: getattr(m, name)[index] if getattr(m, name) is not None else None
            for name in ("values", "scales", "mins", "quants")}
    return DeviceMatrix(m.qtype, int(index.shape[0]), m.cols, **pick)


def dequantize_rows(m: DeviceMatrix, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """float32 (stop - start, cols) values of rows start..stop-1, on m's device (computed as gguf.quants does)."""
    stop = m.rows if stop is None else min(stop, m.rows)
    if m.values is not None:
        return m.values[start:stop].to(torch.float32)
    n = stop - start
    n_blocks = m.cols // BLOCK
    d = m.scales[start:stop].to(torch.float32).reshape(n, n_blocks, 1)
    if m.qtype == T.Q8_0:
        return (m.quants[start:stop].to(torch.float32).reshape(n, n_blocks, BLOCK) * d).reshape(n, m.cols)
    packed = m.quants[start:stop].reshape(n, n_blocks, BLOCK // 2)
    q = torch.cat([packed & 15, packed >> 4], dim=2).to(torch.float32)  # (n, blocks, 32), element order
    if m.qtype == T.Q4_0:
        return ((q - 8) * d).reshape(n, m.cols)
    return (q * d + m.mins[start:stop].to(torch.float32).reshape(n, n_blocks, 1)).reshape(n, m.cols)


def _check_row_bytes(flat: np.ndarray, expected: int, qtype: T) -> None:
    if flat.shape[1] != expected:
        raise HybridInferError(f"{flat.shape[1]} bytes per row, expected {expected} for a {qtype.name} row")
