"""Seeing the kernels a piece of GPU-side work launches, on any device: the torch operators that run a kernel (a
TorchDispatchMode sees each one; views and bare allocations run none; copies, fills and device-to-host reads do) and
the Triton kernel launches (seen at `JITFunction.run`, or the interpreter's `InterpretedFunction.run` under
TRITON_INTERPRET=1, whose own torch calls are not kernels of the work's).

`KernelTrace` is the seeing; `Launches` counts, `graphs.RecordedGraph` records for replay:

    with Launches() as launches:
        ...
    launches.total, launches.by_name   # e.g. 11, {"triton:_attention_kernel": 1, "aten.add.Tensor": 2, ...}
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode

# operators that allocate or alias without writing (no kernel runs)
NO_KERNEL = {"aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default",
             "aten.lift_fresh.default", "aten.set_.source_Storage_storage_offset", "aten.detach.default",
             "aten._unsafe_view.default"}


def runs_a_kernel(func) -> bool:
    return not func.is_view and str(func) not in NO_KERNEL


class KernelTrace(TorchDispatchMode):
    """Calls `torch_op(func, args, kwargs, result)` for each torch operator run (outside a Triton launch) and
    `triton_launch(name, launch)` before each Triton launch (`launch()` issues the same launch again)."""

    def __init__(self):
        super().__init__()
        self._inside_triton = 0
        self._patched: list = []

    def torch_op(self, func, args: tuple, kwargs: dict, result) -> None:
        pass

    def triton_launch(self, name: str, launch: Callable[[], object]) -> None:
        pass

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self._inside_triton:
            self.torch_op(func, args, kwargs, result)
        return result

    def __enter__(self):
        for cls in _triton_function_classes():
            original = cls.run

            def traced(fn, *args, _original=original, **kwargs):
                name = f"triton:{getattr(fn, '__name__', None) or fn.fn.__name__}"
                self.triton_launch(name, lambda: _original(fn, *args, **kwargs))
                self._inside_triton += 1
                try:
                    return _original(fn, *args, **kwargs)
                finally:
                    self._inside_triton -= 1

            cls.run = traced
            self._patched.append((cls, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for cls, original in self._patched:
            cls.run = original
        self._patched.clear()
        return super().__exit__(*exc)


class Launches(KernelTrace):
    """The kernels launched, counted by name."""

    def __init__(self):
        super().__init__()
        self.by_name: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def torch_op(self, func, args: tuple, kwargs: dict, result) -> None:
        if runs_a_kernel(func):
            self.by_name[str(func)] += 1

    def triton_launch(self, name: str, launch: Callable[[], object]) -> None:
        self.by_name[name] += 1


def _triton_function_classes() -> list:
    """The classes whose `run` launches a Triton kernel (none where triton is not installed)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    return [JITFunction, InterpretedFunction]


def kernel_ops(launches: Launches) -> dict[str, int]:
    """by_name sorted by count, for a report."""
    return dict(sorted(launches.by_name.items(), key=lambda item: -item[1]))
