"""Open a GGUF (or PowerInfer PWRI) file lazily: metadata as Python values, tensors as memory-mapped views.

Nothing here copies tensor data: `GGUFTensor.raw` is a zero-copy view into the memory map, so opening a
multi-GB model costs only the header. Every failure a user can cause (missing file, not a GGUF, truncated
file) becomes a one-line `HybridInferError`.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC

from .errors import HybridInferError

PWRI_MAGIC = int.from_bytes(b"PWRI", "little")  # PowerInfer's magic; the rest of the file is GGUF v3


class _Reader(GGUFReader):
    """gguf's reader, also accepting PowerInfer's `PWRI` magic in place of `GGUF`.

    It also slices a plain ndarray view of the memory map instead of the np.memmap itself: every memmap
    slice runs Python-level bookkeeping, which made parsing a 49k-token vocabulary take seconds.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)  # still backed by (and keeping alive) the memory map
        values = super()._get(offset, dtype, count, override_order)
        if offset == 0 and count == 1 and values.dtype == np.uint32 and values[0] == PWRI_MAGIC:
            self.powerinfer = True
            return np.array([GGUF_MAGIC], dtype=np.uint32)
        return values


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # torch order, slowest dimension first: a weight is (out_features, in_features)
    raw: np.ndarray  # zero-copy view of the stored bytes/values, as gguf's reader exposes them

    @property
    def n_bytes(self) -> int:
        return int(self.raw.nbytes)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class GGUFFile:
    """Metadata and tensors of one GGUF file. `metadata[key]` holds plain Python values (lists for arrays)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise HybridInferError(f"model file not found: {self.path} (give the path of a .gguf file with -m)")
        if os.path.isdir(self.path):
            raise HybridInferError(f"{self.path} is a directory; give the path of a .gguf file")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as handle:
            magic = handle.read(4)
        if magic not in (b"GGUF", b"PWRI"):
            raise HybridInferError(f"{self.path} is not a GGUF file (its first bytes are {magic!r}, expected b'GGUF')")
        try:
            reader = _Reader(self.path, "r")
        except (ValueError, IndexError, KeyError, OverflowError, TypeError, MemoryError) as exc:
            raise HybridInferError(f"{self.path} is a corrupt or truncated GGUF file ({exc}); re-download or re-convert it") from None
        self.is_powerinfer = getattr(reader, "powerinfer", False)
        self.metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            self.metadata[key] = _field_value(field)
        self.tensors: dict[str, GGUFTensor] = {}
        for info in reader.tensors:
            shape = tuple(int(d) for d in reversed(info.shape.tolist()))
            expected = _expected_bytes(info.tensor_type, shape)
            end = int(info.data_offset) + expected
            if end > size or info.data.nbytes != expected:
                raise HybridInferError(
                    f"{self.path} is truncated: tensor {info.name} needs bytes up to {end} but the file has {size}; "
                    "re-download or re-convert it")
            self.tensors[info.name] = GGUFTensor(info.name, GGMLQuantizationType(info.tensor_type), shape, info.data)
        self._reader = reader  # keeps the memory map alive

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise HybridInferError(f"{self.path} lacks the metadata key {key}; the file is incomplete or not a model")
        return self.metadata[key]

    def release(self, name: str) -> None:
        """Drop the pages of tensor `name` from this process's memory (after copying what it needs out of them):
        the memory map stays valid, and a later read faults them in again from the page cache. A no-op where the
        operating system offers no madvise."""
        raw = self.tensor(name).raw
        if not hasattr(mmap, "MADV_DONTNEED") or raw.nbytes == 0:
            return
        holder = raw
        while holder is not None and not isinstance(holder, mmap.mmap):
            holder = getattr(holder, "base", None) if not isinstance(holder, np.memmap) else holder._mmap
        if holder is None:
            return
        base = np.frombuffer(holder, dtype=np.uint8)
        start = raw.ctypes.data - base.ctypes.data
        page = mmap.PAGESIZE
        first = -(-start // page) * page  # whole pages inside the tensor only: neighbours keep theirs
        last = (start + raw.nbytes) // page * page
        if last > first:
            holder.madvise(mmap.MADV_DONTNEED, first, last - first)

    def release_copied(self) -> None:
        """`release` every tensor but the float ones, which the kernels may read in place: what a loaded model
        copied (repacked, decoded, uploaded) needs the file's pages no more."""
        for name, tensor in self.tensors.items():
            if tensor.type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
                self.release(name)

    def tensor(self, name: str) -> GGUFTensor:
        if name not in self.tensors:
            raise HybridInferError(f"{self.path} has no tensor {name}; the file is incomplete or of another architecture")
        return self.tensors[name]


def _expected_bytes(qtype: int, shape: tuple[int, ...]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    n_elements = int(np.prod(shape))
    return n_elements // block_size * type_size


def _field_value(field) -> Any:
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY:
        return list(field.contents())
    return field.contents()
