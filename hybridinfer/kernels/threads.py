"""numba's threading layer: which one runs the parallel kernels, and when it starts.

The layer is chosen at import and started at the first kernel variant (`variants.specialization`) or model load,
never at import, so that a program may import the package and then fork (Python's `multiprocessing` on Linux,
pre-forking servers).

Choice, unless $NUMBA_THREADING_LAYER says otherwise: Intel TBB (the `tbb` wheel, a dependency on x86-64 Linux),
the one layer numba documents as both fork-safe and thread-safe, as fast per call as OpenMP. pip puts its library
in the environment's `lib/`, which the dynamic loader does not search: it is loaded here by its path first, so that
numba's TBB extension finds it by name. Without it numba falls back to GNU OpenMP, which cannot run in a child
forked after its parent ran it: such a child gets a `HybridInferError` saying what to do, not a SIGTERM.
"""

from __future__ import annotations

import ctypes
import os

import numba

from ..errors import HybridInferError

_started = False
_forked_after_openmp = False


def _load_tbb() -> bool:
    """Load the `tbb` wheel's library globally; whether it is there."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        files = distribution("tbb").files or []
    except (ImportError, PackageNotFoundError):
        return False
    libraries = [path for path in files if path.name == "libtbb.so.12"]
    for path in libraries:
        try:
            ctypes.CDLL(str(path.locate()), mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def choose() -> None:
    """At import: TBB when present and the user named no layer."""
    if not os.environ.get("NUMBA_THREADING_LAYER") and _load_tbb():
        numba.config.THREADING_LAYER = "tbb"


def start() -> None:
    """Start the layer before the first kernel runs. numba starts it when it compiles or loads a parallel
    function, but not when it loads from its cache a serial function that calls one (numba issue #8578): a fresh
    process whose first kernel was such a block jumped to a null pointer. `get_num_threads` starts it."""
    global _started
    if _forked_after_openmp:
        raise HybridInferError(
            "this process was forked after its parent ran the CPU kernels on GNU OpenMP threads, which cannot run in "
            "a forked child: install the `tbb` package, set NUMBA_THREADING_LAYER=workqueue before the parent starts, "
            "or start children with multiprocessing's 'spawn' method")
    if not _started:
        numba.get_num_threads()
        _started = True


def layer() -> str:
    """The layer that runs the kernels (starting it): tbb, omp or workqueue."""
    start()
    return numba.threading_layer()


def _after_fork_in_child() -> None:
    global _forked_after_openmp
    if _started and numba.threading_layer() == "omp":
        from numba.np.ufunc import omppool
        _forked_after_openmp = getattr(omppool, "openmp_vendor", "GNU") == "GNU"  # Intel's OpenMP survives a fork


os.register_at_fork(after_in_child=_after_fork_in_child)
