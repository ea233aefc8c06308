"""Compute kernels of the CPU: `packed` + `cpu_quant` (numba, every GGUF weight format repacked for fast
reading; `simd` and `simd_rows` hold the AVX-512 intrinsics they use), `cpu_accumulate_int8` (the sparse down
projection with int8 coefficients), `row_tiles` (the packed-row helpers both share), `cpu_ops` and `cpu_layer`
(a decoder layer's blocks as single numba calls), `requantize` (transposing a quantized weight at load) and
`reference` (plain numpy twins). `formats` numbers the weight formats for every kernel, the GPU's included.

numba caches compiled kernels on disk, but it checks only each function's own source file: a cached block of
`cpu_layer` that calls a changed `cpu_quant` kernel would be loaded stale (and can crash). So, unless
NUMBA_CACHE_DIR is set, the cache lives in a directory named after a hash of this package's sources.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba


def _cache_dir() -> str:
    sources = sorted(Path(__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    root = Path(os.environ.get("HYBRIDINFER_CACHE", Path.home() / ".cache" / "hybridinfer"))
    return str(root / "numba" / f"{numba.__version__}-{digest}")


if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = _cache_dir()  # read when the kernel modules below are decorated
