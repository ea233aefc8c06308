"""How long this process has spent compiling numba kernels, so that timings report it on its own line.

numba compiles a kernel the first time it is called with new types, unless its disk cache (`kernels/__init__.py`)
holds it; a fresh machine, a new numba or a changed kernel file compiles again. A listener on numba's compile
events sums the time of the outermost compilations (a kernel compiles the kernels it calls inside its own time).
With `announce(True)` (the CLI), the first compilation prints a notice on stderr and each kernel that took a
while a progress line, so that a first run does not look hung.
"""

from __future__ import annotations

import sys
import threading
import time

import numba
from numba.core import event

from .cpu_target import TARGET

_lock = threading.Lock()
_state = {"seconds": 0.0, "depth": 0, "start": 0.0, "announce": False, "announced": False, "count": 0}
PROGRESS_SECONDS = 2.0  # kernels that compile at least this long get a progress line when announcing


def seconds() -> float:
    """Seconds spent compiling so far in this process (outermost compilations only)."""
    with _lock:
        return _state["seconds"]


def cache_directory() -> str:
    """Where numba keeps the compiled kernels (`kernels/__init__.py`)."""
    return numba.config.CACHE_DIR


def announce(enabled: bool = True) -> None:
    """Print compilation notices and progress on stderr."""
    _state["announce"] = enabled


class _Listener(event.Listener):
    def on_start(self, ev: event.Event) -> None:
        with _lock:
            if _state["depth"] == 0:
                _state["start"] = time.perf_counter()
                if _state["announce"] and not _state["announced"]:
                    _state["announced"] = True
                    print(f"note: compiling the CPU kernels this run needs (once for this machine, its "
                          f"{TARGET.instructions} build, and numba {numba.__version__}; cached in "
                          f"{cache_directory()})", file=sys.stderr, flush=True)
            _state["depth"] += 1

    def on_end(self, ev: event.Event) -> None:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                took = time.perf_counter() - _state["start"]
                _state["seconds"] += took
                _state["count"] += 1
                if _state["announce"] and took >= PROGRESS_SECONDS:
                    function = ev.data["dispatcher"].py_func
                    name = function.__qualname__.split(".<locals>")[0]  # a block factory's name for its blocks
                    print(f"note:   compiled {function.__module__.rsplit('.', 1)[-1]}.{name} "
                          f"in {took:.1f} s ({_state['seconds']:.0f} s so far)", file=sys.stderr, flush=True)


event.register("numba:compile", _Listener())


class Stopwatch:
    """Wall time of a stretch of work, less the compilation inside it: `with Stopwatch() as w: ...`, then
    w.ms (work) and w.compile_ms."""

    def __enter__(self) -> Stopwatch:
        self._start, self._compiled = time.perf_counter(), seconds()
        return self

    def __exit__(self, *exc) -> None:
        compiled = seconds() - self._compiled
        self.compile_ms = compiled * 1000
        self.ms = max(0.0, time.perf_counter() - self._start - compiled) * 1000
