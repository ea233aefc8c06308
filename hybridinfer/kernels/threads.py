"""numba's threading layer: when it starts, and what a forked child gets.

The layer starts at the first kernel variant (`variants.specialization`) or model load, never at import, so that a
program may import the package and then fork (Python's `multiprocessing` on Linux, pre-forking servers).

numba picks the layer (GNU OpenMP here, unless $NUMBA_THREADING_LAYER names another). GNU OpenMP cannot run in a
child forked after its parent ran it: such a child gets a `HybridInferError` saying what to do, not a SIGTERM.
torch runs its own parallel loops (and MKL's vector math, e.g. a float64 cos of a few thousand values on an AMD CPU)
on GNU OpenMP too, whatever numba's layer: a child forked after its parent's torch ran them waited for ever in its
first such op. A forked child's torch therefore runs on its calling thread (`set_torch_threads`).

The fork-safe layers cost decode speed (docs/cpu-decoding.md): the work queue, which is not thread-safe either,
and Intel TBB. pip puts the `tbb` wheel's library in the environment's `lib/`, which the dynamic loader does not
search: when $NUMBA_THREADING_LAYER asks for TBB, it is loaded here by its path first, so that numba finds it.
"""

from __future__ import annotations

import ctypes
import os

import numba
import torch

from ..errors import HybridInferError

_started = False
_forked_after_openmp = False
_forked = False


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


def prepare() -> None:
    """At import: make the `tbb` wheel loadable when $NUMBA_THREADING_LAYER asks for TBB (or a layer TBB serves)."""
    if os.environ.get("NUMBA_THREADING_LAYER", "").lower() in ("tbb", "safe", "threadsafe", "forksafe"):
        _load_tbb()


def start() -> None:
    """Start the layer before the first kernel runs. numba starts it when it compiles or loads a parallel
    function, but not when it loads from its cache a serial function that calls one (numba issue #8578): a fresh
    process whose first kernel was such a block jumped to a null pointer. `get_num_threads` starts it."""
    global _started
    if _forked_after_openmp:
        raise HybridInferError(
            "this process was forked after its parent ran the CPU kernels on GNU OpenMP threads, which cannot run in "
            "a forked child: start children with multiprocessing's 'spawn' or 'forkserver' method, fork before the "
            "parent loads a model, or start the parent with NUMBA_THREADING_LAYER=workqueue (or =tbb, with the `tbb` "
            "package installed)")
    if not _started:
        try:
            numba.get_num_threads()
        except ValueError as exc:  # a layer named by NUMBA_THREADING_LAYER that cannot load
            raise HybridInferError(f"numba's threading layer {numba.config.THREADING_LAYER!r} cannot start "
                                   f"({str(exc).splitlines()[0]}): set NUMBA_THREADING_LAYER to tbb, omp or "
                                   f"workqueue, or unset it") from None
        _started = True


def layer() -> str:
    """The layer that runs the kernels (starting it): tbb, omp or workqueue."""
    start()
    return numba.threading_layer()


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads: `threads`, or 1 in a forked child (see the module doc)."""
    torch.set_num_threads(1 if _forked else threads)


def _after_fork_in_child() -> None:
    global _forked_after_openmp, _forked
    _forked = True
    torch.set_num_threads(1)  # GNU OpenMP's region with one thread starts none, and waits for none of the parent's
    if _started and numba.threading_layer() == "omp":
        from numba.np.ufunc import omppool
        _forked_after_openmp = getattr(omppool, "openmp_vendor", "GNU") == "GNU"  # Intel's OpenMP survives a fork


os.register_at_fork(after_in_child=_after_fork_in_child)
