"""Open a GGUF (or PowerInfer PWRI) file lazily: metadata as Python values, tensors as memory-mapped views.

Nothing here copies tensor data: `GGUFTensor.raw` is a zero-copy view into the memory map, so opening a
multi-GB model costs only the header. Every failure a user can cause (missing file, not a regular file, not a GGUF,
truncated file) becomes a one-line `HybridInferError`.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import HybridInferError
from .gguf_header import HeaderError, read_header, tensor_view
from .weight_formats import FLOAT_TYPES

MAGICS = (b"GGUF", b"PWRI")  # PWRI: PowerInfer's magic; the rest of its file is GGUF v3


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
        require_regular_file(self.path)
        try:
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise HybridInferError(f"{self.path} is empty; re-download or re-convert it") from None
        except OSError as exc:
            raise HybridInferError(f"cannot read {self.path}: {exc.strerror}") from None
        magic = self._map[:4]
        if magic not in MAGICS:
            raise HybridInferError(f"{self.path} is not a GGUF file (its first bytes are {magic!r}, expected b'GGUF')")
        self.is_powerinfer = magic == b"PWRI"
        try:
            header = read_header(self._map)
        except HeaderError as exc:
            raise HybridInferError(f"{self.path} is corrupt or truncated: {exc}; re-download or re-convert it") from None
        self.version = header.version
        self.metadata: dict[str, Any] = header.metadata
        self.value_types = header.value_types  # key -> (GGUFValueType,) or (ARRAY, item type)
        self.data_offset = header.data_offset
        self.tensors: dict[str, GGUFTensor] = {
            info.name: GGUFTensor(info.name, info.type, tuple(reversed(info.dims)), tensor_view(self._map, info))
            for info in header.tensors}

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise HybridInferError(f"{self.path} lacks the metadata key {key}; the file is incomplete or not a model")
        return self.metadata[key]

    # typed reads: a value of the wrong type or out of range is one line naming the key and what it must be

    def bad_value(self, key: str, value: Any, expected: str) -> HybridInferError:
        shown = f"an array of {len(value)} items" if isinstance(value, list) else f"{value!r:.60}"
        return HybridInferError(f"{self.path}: metadata {key} is {shown}, expected {expected}; the file is corrupt "
                                "or was made by a broken tool: make it again")

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.metadata.get(key, default) if default is not None else self.require(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.bad_value(key, value, f"an integer from {low} to {high}")
        return value

    def number(self, key: str, default: float | None = None, above: float | None = None,
               below: float | None = None, at_least: float | None = None) -> float:
        """A finite float (an integer is accepted), optionally > `above`, < `below`, >= `at_least`."""
        value = self.metadata.get(key, default) if default is not None else self.require(key)
        if not _is_finite_number(value) or (above is not None and value <= above) or \
                (below is not None and value >= below) or (at_least is not None and value < at_least):
            bounds = f" above {above}" if above is not None else ""
            bounds += f" and below {below}" if below is not None else ""
            bounds += f" (at least {at_least})" if at_least is not None else ""
            raise self.bad_value(key, value, f"a finite number{bounds}")
        return float(value)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.metadata.get(key, default) if default is not None else self.require(key)
        if not isinstance(value, str):
            raise self.bad_value(key, value, "a string")
        return value

    def numbers(self, key: str, length: int | None = None, default: list | None = None) -> list[float]:
        """An array of finite numbers, of `length` items when given."""
        value = self.metadata.get(key, default) if default is not None else self.require(key)
        if not isinstance(value, list) or not all(_is_finite_number(v) for v in value):
            raise self.bad_value(key, value, "an array of finite numbers")
        if length is not None and len(value) != length:
            raise self.bad_value(key, value, f"an array of {length} numbers")
        return [float(v) for v in value]

    def header_bytes(self) -> bytes:
        """The header: metadata and tensor table, everything before the tensor data."""
        return self._map[:self.data_offset]

    @property
    def address_range(self) -> tuple[int, int]:
        """[low, high) addresses of the memory map: an array whose data lies inside is a view of the file."""
        low = np.frombuffer(self._map, np.uint8, 1).ctypes.data
        return low, low + len(self._map)

    def release(self, name: str) -> None:
        """Drop the pages of tensor `name` from this process's memory (after copying what it needs out of them):
        the memory map stays valid, and a later read faults them in again from the page cache. A no-op where the
        operating system offers no madvise."""
        raw = self.tensor(name).raw
        if not hasattr(mmap, "MADV_DONTNEED") or raw.nbytes == 0:
            return
        start = raw.ctypes.data - np.frombuffer(self._map, np.uint8, 1).ctypes.data
        page = mmap.PAGESIZE
        first = -(-start // page) * page  # whole pages inside the tensor only: neighbours keep theirs
        last = (start + raw.nbytes) // page * page
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def release_copied(self) -> None:
        """`release` every tensor but the float ones, which the kernels may read in place: what a loaded model
        copied (repacked, decoded, uploaded) needs the file's pages no more."""
        for name, tensor in self.tensors.items():
            if tensor.type not in FLOAT_TYPES:
                self.release(name)

    def tensor(self, name: str) -> GGUFTensor:
        if name not in self.tensors:
            raise HybridInferError(f"{self.path} has no tensor {name}; the file is incomplete or of another architecture")
        return self.tensors[name]


def require_regular_file(path: str) -> None:
    """Refuse, in one line, a path that is missing or not a regular file, before anything opens it: opening a
    FIFO blocks until a writer comes, and a device or socket never ends."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        raise HybridInferError(f"file not found: {path} (give the path of a .gguf file)") from None
    if stat.S_ISDIR(mode):
        raise HybridInferError(f"{path} is a directory; give the path of a .gguf file")
    if not stat.S_ISREG(mode):
        raise HybridInferError(f"{path} is {_special_kind(mode)}, not a regular file; give the path of a .gguf file")


def _special_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
