"""Repacked weights kept on disk, so that the next start maps them instead of repacking.

What a run packs from a file (quantized rows rearranged for the kernels, Q/K/V stacked, the transposed down
projection of the sparse modes, predictors as Q8_0) is written once to `$HYBRIDINFER_CACHE/repack/` and
memory-mapped by the next start with the same file and mode: no repacking, and no anonymous copy either, since
the mapped pages are the page cache's (the run that writes the cache maps it too, and drops its own copies).
An entry is keyed by the source file's identity (resolved path, size, modification time, inode, a hash of its
header) and what the run holds; the layout version below changes when the packed layout does. Saving an entry
removes the older entries of the same file and mode, and the least recently written ones while the cache holds
more than MAX_BYTES; an entry is not written when the disk lacks room. HYBRIDINFER_REPACK_CACHE=off turns the
cache off, or names another directory.

Entry: b"HYBRPACK" | u32 LAYOUT_VERSION | u64 index offset | u64 index bytes | the arrays, each at a page boundary |
index (JSON: name -> qtype, rows, cols, dtype, shape, offset). An entry is written matrix by matrix as a load packs
them (`EntryWriter`), each one mapped back from the partial file at once, so a first start holds one packed matrix
in anonymous memory at a time, not the model. Mapped copy-on-write (never written): the arrays are writable numpy
arrays, of the same numba types as freshly packed ones.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from ..kernels.packed import PackedMatrix

MAX_BYTES = 32 * 2**30  # the oldest entries go when the cache holds more
FREE_MARGIN = 2**30  # an entry is written only if the disk keeps this much free after it
MAGIC = b"HYBRPACK"
LAYOUT_VERSION = 5  # bump when kernels/packed.py, kernels/requantize.py, the predictor packing or the stacking of
# mixed formats (runtime/weights.stacked) change (2: Q5_x, 3: K, 4: mixed Q/K/V as Q8_0, Q/K rows of NEOX models,
# 5: the entry written matrix by matrix, its index last)
ALIGN = mmap.ALLOCATIONGRANULARITY  # each array its own mapping while the entry is written
HEADER = struct.Struct("<IQQ")  # after MAGIC: layout version, index offset, index bytes


def cache_directory() -> Path | None:
    setting = os.environ.get("HYBRIDINFER_REPACK_CACHE", "")
    if setting.lower() in ("off", "0", "no"):
        return None
    if setting:
        return Path(setting)
    root = Path(os.environ.get("HYBRIDINFER_CACHE", Path.home() / ".cache" / "hybridinfer"))
    return root / "repack"


class RepackCache:
    """The cache entry for one source file (`path`, whose header is its first `header_bytes` bytes) and `mode`
    (what the run packs, e.g. "sparse" or "predictors"); `path` None when the cache is off."""

    def __init__(self, source: str | os.PathLike, header: bytes, mode: str):
        directory = cache_directory()
        self.path: Path | None = None
        self._map: mmap.mmap | None = None
        self._loaded: dict[str, PackedMatrix] | None = None
        if directory is None:
            return
        resolved = Path(source).resolve()
        stat = resolved.stat()
        identity = hashlib.sha256()
        for part in (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino, mode, LAYOUT_VERSION):
            identity.update(repr(part).encode() + b"\0")
        identity.update(header)
        self._prefix = f"{resolved.name}-{hashlib.sha256(mode.encode()).hexdigest()[:8]}-"
        self.directory = directory
        self.path = directory / f"{self._prefix}{identity.hexdigest()[:24]}.bin"

    def load(self) -> dict[str, PackedMatrix]:
        """The stored matrices, mapped from disk; {} when there is no entry (or a damaged one, then removed)."""
        if self._loaded is not None:  # the engine's check and the sparse FFN read one entry once
            return self._loaded
        if self.path is None or not self.path.exists():
            return {}
        try:
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            self._loaded = self._matrices(self._map)
            return self._loaded
        except (OSError, ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError):
            self._map = None
            self.path.unlink(missing_ok=True)  # damaged or of another layout: packed again and rewritten
            return {}

    def save(self, matrices: dict[str, PackedMatrix]) -> dict[str, PackedMatrix]:
        """Write `matrices` as this entry and return them mapped from it (their in-memory copies can go);
        `matrices` itself when the cache is off or the directory cannot be written."""
        with self.writer(sum(m.data.nbytes for m in matrices.values())) as writer:
            mapped = {name: writer.add(name, m) for name, m in matrices.items()}
        return mapped

    def writer(self, expected_bytes: int) -> EntryWriter:
        """A writer of this entry (a context manager: the entry exists once its block ends without an error, if
        anything was added); one that keeps what it is given in memory when the cache is off, the directory cannot
        be written or the disk lacks `expected_bytes` plus a margin."""
        return EntryWriter(self, expected_bytes)

    def _trim(self) -> None:
        """Remove the least recently written entries while the cache holds more than MAX_BYTES."""
        entries = sorted(self.directory.glob("*.bin"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for old in entries:
            if total <= MAX_BYTES:
                break
            if old != self.path:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)

    @staticmethod
    def _matrices(mapped: mmap.mmap) -> dict[str, PackedMatrix]:
        if mapped[:len(MAGIC)] != MAGIC:
            raise ValueError("not a repack cache entry")
        version, at, length = HEADER.unpack_from(mapped, len(MAGIC))
        if version != LAYOUT_VERSION:
            raise ValueError("another layout version")
        index = json.loads(mapped[at:at + length])
        matrices = {}
        for name, (qtype, rows, cols, dtype, shape, offset) in index.items():
            count = int(np.prod(shape))
            data = np.frombuffer(mapped, np.dtype(dtype), count, offset).reshape(shape)
            matrices[name] = PackedMatrix(T[qtype], rows, cols, data)
        return matrices


class EntryWriter:
    """Writes one cache entry matrix by matrix into a partial file beside it: `add` returns the matrix mapped from
    that file (the caller drops its own copy), `__exit__` writes the index and renames the file into place, or
    removes it on an error. Off (`add` returns what it is given) where the entry cannot be written."""

    def __init__(self, cache: RepackCache, expected_bytes: int):
        self.cache, self.index, self.mapped = cache, {}, {}
        self.partial: Path | None = None
        self._file = None
        self._expected = expected_bytes
        self._off = cache.path is None  # off for good: no cache, no room, or a failing disk

    def _open(self) -> None:
        """The partial file, created at the first `add` (a start that packs nothing writes nothing)."""
        try:
            self.cache.directory.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.cache.directory).free < self._expected + FREE_MARGIN:
                self._off = True  # no room: this run keeps its own copies
                return
            self.partial = self.cache.directory / f".{self.cache.path.name}.{os.getpid()}.partial"
            self._file = open(self.partial, "wb+")
            self._file.write(MAGIC + HEADER.pack(LAYOUT_VERSION, 0, 0))
            self._end = ALIGN
        except OSError:
            self._stop()

    def __enter__(self) -> EntryWriter:
        return self

    def add(self, name: str, matrix: PackedMatrix) -> PackedMatrix:
        """`matrix` written into the entry and mapped back from it (itself when the writer is off)."""
        if self._file is None and not self._off:
            self._open()
        if self._file is None:
            return matrix
        data = np.ascontiguousarray(matrix.data)
        try:
            self._file.seek(self._end)
            self._file.write(data.data)
            self._file.flush()
            mapping = mmap.mmap(self._file.fileno(), max(1, data.nbytes), access=mmap.ACCESS_COPY, offset=self._end)
        except (OSError, ValueError):
            self._stop()  # a full or failing disk: this run keeps its own copies from here on
            return matrix
        self.index[name] = [matrix.qtype.name, matrix.rows, matrix.cols, data.dtype.str, list(data.shape), self._end]
        self._end += -(-data.nbytes // ALIGN) * ALIGN
        mapped = np.frombuffer(mapping, data.dtype, data.size).reshape(data.shape)
        self.mapped[name] = PackedMatrix(matrix.qtype, matrix.rows, matrix.cols, mapped)
        return self.mapped[name]

    def __exit__(self, error_type, error, trace) -> None:
        if self._file is None:
            return
        if error_type is not None or not self.index:
            self._stop()
            return
        try:
            encoded = json.dumps(self.index).encode()
            self._file.seek(self._end)
            self._file.write(encoded)
            self._file.seek(len(MAGIC))
            self._file.write(HEADER.pack(LAYOUT_VERSION, self._end, len(encoded)))
            self._file.close()
            os.replace(self.partial, self.cache.path)
            self.cache._loaded = None  # a later `load` maps the new entry
            for old in self.cache.directory.glob(self.cache._prefix + "*.bin"):  # older entries of this file, mode
                if old != self.cache.path:
                    old.unlink(missing_ok=True)
            self.cache._trim()
        except OSError:
            self._stop()  # the mapped matrices stay valid: an unlinked file's pages live while mapped

    def _stop(self) -> None:
        """No entry from this writer: its partial file goes (what was mapped from it stays readable)."""
        if self._file is not None:
            self._file.close()
        self._file, self._off = None, True
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)
