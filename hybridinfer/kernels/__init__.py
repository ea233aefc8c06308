"""Compute kernels of the CPU, numba code over weights repacked for fast reading (`packed`):

  quant_dot, float_rows      dense and gathered-row products: one kernel per quantized format and activation
                             type (Q8_0/Q4_x/Q5_x x int8/float32), float formats by dtype
  cpu_accumulate_int8,       the sparse down projection (S3): int8 coefficients (default) or float32, one kernel
  quant_accumulate           per quantized format
  dispatch                   picks those kernels for format codes known at compile time (`product`, `accumulate`)
  cpu_layer                  a decoder layer's blocks as single numba calls, each made for its weights' formats
  cpu_quant                  activations (`Activations`, int8 blocks) and the Python API over one matrix
  cpu_ops, requantize        norms, RoPE, attention, activations; transposing a quantized weight at load
  simd_types                 the vector intrinsics' types (F32x16, I32x16) and LLVM codegen helpers; the intrinsics:
  simd_memory, simd_half     masked loads and stores, prefetch; F16/BF16 bits to and from float32
  simd_float, simd_int       float and integer lane arithmetic (plain IR, any target)
  simd_dot, simd_planes      byte dot products (AVX-512, AVX2, generic); bytes and nibbles widened to float planes
  simd_bits, simd_rows       the Q5 and K formats' 5- and 6-bit quants; the int8 S3's four rows interleaved
  row_tiles                  packed-row helpers the kernels inline (tile offsets, prefetch shares)
  cpu_target                 the CPU and instruction set the kernels are compiled for (HYBRIDINFER_CPU)
  formats, reference         the one numbering of weight formats; plain numpy twins of every kernel
  compile_time               the time spent compiling, reported on its own line
  threads                    numba's threading layer, started at the first kernel; what a forked child gets

A run compiles (or loads from numba's disk cache) only the kernels of its file's formats and its mode. numba
checks only each function's own source file: a cached block of `cpu_layer` that calls a changed kernel would be
loaded stale (and can crash). So, unless NUMBA_CACHE_DIR is set, the cache lives in a directory named after a
hash of this package's code and of the format registry it reads constants from (comments and docstrings aside),
and after the target (`cpu_target.TARGET.name`).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
from pathlib import Path

import numba

from . import threads
from .cpu_target import TARGET

_NO_KERNELS = {"__init__.py", "compile_time.py", "threads.py"}  # files no compiled code depends on: not in the hash


def _code_of(path: Path) -> bytes:
    """A file's code without its comments and docstrings: editing those keeps the cache (numba itself then
    recompiles only that file's functions, whose modification time changed)."""
    tree = ast.parse(path.read_bytes())
    _strip_docstrings(tree)
    return ast.dump(tree).encode()


def _strip_docstrings(node) -> None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        node.body = node.body[1:] or [ast.Pass()]
    for child in node.body:
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            _strip_docstrings(child)


def _cache_dir() -> str:
    here = Path(__file__).parent
    sources = sorted(p for p in here.glob("*.py") if p.name not in _NO_KERNELS)
    sources.append(here.parent / "model_file" / "weight_formats.py")  # the layout constants the kernels read
    root = Path(os.environ.get("HYBRIDINFER_CACHE", Path.home() / ".cache" / "hybridinfer")) / "numba"
    # the digest of these exact files, remembered by their paths, sizes and modification times (parsing takes ~0.1 s)
    stamps = hashlib.sha256(repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]).encode())
    remembered = root / f"sources-{stamps.hexdigest()[:16]}"
    try:
        digest = remembered.read_text()
    except OSError:
        digest = hashlib.sha256(b"".join(_code_of(path) for path in sources)).hexdigest()[:16]
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True)
            remembered.write_text(digest)
    return str(root / f"{numba.__version__}-{TARGET.name}-{digest}")


def _serialize_cache_writes() -> None:
    """numba saves a cache entry by reading its function's index, taking the first unused data file number and
    writing both: two processes saving different entries of one function at once (a warmup beside a run, two
    runs on a fresh machine) can take the same number, leaving an index entry that loads the other's code. A lock
    file per index makes that step atomic."""
    try:
        import fcntl
        from numba.core.caching import IndexDataCacheFile
    except ImportError:  # not POSIX, or another numba layout: numba's own behaviour
        return
    save = IndexDataCacheFile.save

    def locked_save(self, key, data):
        with open(self._index_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                save(self, key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    IndexDataCacheFile.save = locked_save


_serialize_cache_writes()
threads.prepare()  # the threading layer starts at the first kernel (threads.start), not at import
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = _cache_dir()  # read when the kernel modules below are decorated

from . import compile_time  # noqa: E402,F401  (counts compilation from the first kernel on)
