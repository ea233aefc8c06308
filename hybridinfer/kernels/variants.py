"""numba functions made for constants: a kernel or block written once, compiled per format code and activation
type, so that a run compiles only the variants its file and mode need.

A variant is a closure over plain constants (ints, bools): numba reads closure constants as literals and drops
the branches they rule out before compiling, and its disk cache keys a closure by them. Each variant is named
after its constants, because numba keeps one cache index per function name: processes that compile different
variants at once then never overwrite each other's entries. `made` holds every variant this process has made.
"""

from __future__ import annotations

from numba import njit

from . import cpu_target, threads

made: dict[str, object] = {}  # variant name -> numba dispatcher


def specialization(*constants, **options):
    """Decorate a closure over `constants` as `njit(nogil=True, cache=True, **options)`, named after them."""
    cpu_target.require_valid_switch()
    threads.start()  # before a cached serial block that calls a parallel kernel can run
    def decorate(function):
        base = function.__qualname__.split(".<locals>")[0]
        function.__qualname__ = f"{base}.{'_'.join(str(c) for c in constants)}"
        compiled = njit(nogil=True, cache=True, **options)(function)
        made[f"{function.__module__.rsplit('.', 1)[-1]}.{function.__qualname__}"] = compiled
        return compiled
    return decorate
