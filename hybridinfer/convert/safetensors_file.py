"""Safetensors files, read with plain positioned reads so only the tensor being converted is in memory (a
memory map would leave every touched page of a multi-GB shard resident).

The format: 8 bytes of little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
the data. The whole header is checked here (types, offsets within the file, byte counts matching shapes), so
a corrupt or truncated file is refused in one line before any output is written."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from ..model_file.dequantize import bf16_to_f32
from ..errors import HybridInferError
from .json_file import shown
from .source_tensor import SourceTensor

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit


def safetensors_tensors(path: Path) -> list[SourceTensor]:
    header, data_start, size = _read_header(path)
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(path, name, info)
        if data_start + end > size:
            raise HybridInferError(
                f"{path} is truncated: tensor {name} ends past the end of the file; download it again")
        tensors.append(SourceTensor(name, shape, dtype, end - begin,
                                    _loader(path, data_start + begin, end - begin, dtype, shape)))
    return tensors


def _read_header(path: Path) -> tuple[dict, int, int]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise HybridInferError(f"{path} is truncated (no safetensors header); download it again")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise HybridInferError(f"{path} is truncated or not a safetensors file; download it again")
            raw = handle.read(header_len)
    except OSError as exc:
        raise HybridInferError(f"cannot read {path}: {exc.strerror}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        header = None
    if not isinstance(header, dict):
        raise HybridInferError(f"{path} is not a safetensors file (bad header); download it again")
    return header, 8 + header_len, size


def _entry(path: Path, name: str, info) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, or a one-line refusal."""
    if not isinstance(info, dict):
        raise _corrupt(path, name, f"entry {shown(info)}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise HybridInferError(f"{path}: tensor {name} has dtype {dtype}; only F32, F16, BF16, F64 are supported")
    if not isinstance(dtype, str):
        raise _corrupt(path, name, f"dtype {shown(dtype)}")
    if not _int_list(shape) or any(d < 0 for d in shape):
        raise _corrupt(path, name, f"shape {shown(shape)}")
    if not _int_list(offsets) or len(offsets) != 2 or not 0 <= offsets[0] <= offsets[1]:
        raise _corrupt(path, name, f"data_offsets {shown(offsets)}")
    begin, end = offsets
    if end - begin != math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize:
        raise _corrupt(path, name, f"{end - begin} bytes for shape {shape} of {dtype}")
    return dtype, tuple(shape), begin, end


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _corrupt(path: Path, name: str, what: str) -> HybridInferError:
    return HybridInferError(f"{path} is corrupt: tensor {name!r} has {what}; download it again")


def _loader(path: Path, offset: int, n_bytes: int, dtype: str, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        raw = np.empty(n_bytes, dtype=np.uint8)
        try:
            with open(path, "rb", buffering=0) as handle:
                view, done = memoryview(raw), 0
                while done < n_bytes:
                    got = os.preadv(handle.fileno(), [view[done:]], offset + done)
                    if got == 0:
                        raise HybridInferError(f"{path} is truncated; download it again")
                    done += got
        except OSError as exc:
            raise HybridInferError(f"cannot read {path}: {exc.strerror}") from None
        values = raw.view(DTYPES[dtype])
        if dtype == "BF16":
            return bf16_to_f32(values).reshape(shape)
        return values.astype(np.float32, copy=False).reshape(shape)
    return load
