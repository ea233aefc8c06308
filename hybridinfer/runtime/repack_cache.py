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

Entry: b"HYBRPACK" | u32 LAYOUT_VERSION | u64 index bytes | index (JSON: name -> qtype, rows, cols, dtype, shape,
offset) | the arrays, each at a 64-byte boundary. Mapped copy-on-write (never written): the arrays are writable
numpy arrays, of the same numba types as freshly packed ones.
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

from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..kernels.packed import PackedMatrix

MAX_BYTES = 32 * 2**30  # the oldest entries go when the cache holds more
FREE_MARGIN = 2**30  # an entry is written only if the disk keeps this much free after it
MAGIC = b"HYBRPACK"
LAYOUT_VERSION = 4  # bump when kernels/packed.py, kernels/requantize.py, the predictor packing or the stacking of
# mixed formats (runtime/weights.stacked) change (2: Q5_x, 3: K, 4: mixed Q/K/V as Q8_0, Q/K rows of NEOX models)
ALIGN = 64


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
        if self.path is None or not matrices:
            return matrices
        index, offset = {}, 0
        for name, m in matrices.items():
            index[name] = [m.qtype.name, m.rows, m.cols, m.data.dtype.str, list(m.data.shape), offset]
            offset += -(-m.data.nbytes // ALIGN) * ALIGN
        encoded = json.dumps(index).encode()
        start = -(-(len(MAGIC) + 12 + len(encoded)) // ALIGN) * ALIGN
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.directory).free < start + offset + FREE_MARGIN:
                return matrices  # no room: this run keeps its own copies
            with atomic_output(self.path) as partial, open(partial, "wb") as out:
                out.write(MAGIC + struct.pack("<IQ", LAYOUT_VERSION, len(encoded)) + encoded)
                for name, m in matrices.items():
                    out.seek(start + index[name][5])
                    out.write(np.ascontiguousarray(m.data).data)
                out.truncate(start + offset)
            for old in self.directory.glob(self._prefix + "*.bin"):  # older entries of this file and mode
                if old != self.path:
                    old.unlink(missing_ok=True)
            self._trim()
        except (OSError, HybridInferError):
            return matrices  # a read-only or full disk: this run keeps its own copies
        self._loaded = None  # what was just written, mapped
        return self.load() or matrices

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
        version, length = struct.unpack_from("<IQ", mapped, len(MAGIC))
        if version != LAYOUT_VERSION:
            raise ValueError("another layout version")
        index = json.loads(mapped[len(MAGIC) + 12:len(MAGIC) + 12 + length])
        start = -(-(len(MAGIC) + 12 + length) // ALIGN) * ALIGN
        matrices = {}
        for name, (qtype, rows, cols, dtype, shape, offset) in index.items():
            count = int(np.prod(shape))
            data = np.frombuffer(mapped, np.dtype(dtype), count, start + offset).reshape(shape)
            matrices[name] = PackedMatrix(T[qtype], rows, cols, data)
        return matrices
