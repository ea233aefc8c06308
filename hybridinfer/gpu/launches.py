"""Counting what a piece of GPU-side work launches, on any device: the torch operators that run a kernel (a
TorchDispatchMode sees each one; views and bare allocations run none and are not counted; copies, fills and
device-to-host reads are) and the Triton kernel launches (counted at `JITFunction.run`, or the interpreter's
`InterpretedFunction.run` under TRITON_INTERPRET=1, whose own torch calls are not counted).

    with Launches() as launches:
        ...
    launches.total, launches.by_name   # e.g. 11, {"triton:_attention_kernel": 1, "aten.add.Tensor": 2, ...}
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

# operators that allocate without writing (no kernel runs)
NO_KERNEL = {"aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default",
             "aten.lift_fresh.default", "aten.set_.source_Storage_storage_offset", "aten.detach.default",
             "aten._unsafe_view.default"}


class Launches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_name: Counter = Counter()
        self._inside_triton = 0
        self._patched: list = []

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not self._inside_triton and not func.is_view and name not in NO_KERNEL:
            self.by_name[name] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for cls in _triton_function_classes():
            original = cls.run

            def counted(fn, *args, _original=original, **kwargs):
                self.by_name[f"triton:{getattr(fn, '__name__', None) or fn.fn.__name__}"] += 1
                self._inside_triton += 1
                try:
                    return _original(fn, *args, **kwargs)
                finally:
                    self._inside_triton -= 1

            cls.run = counted
            self._patched.append((cls, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for cls, original in self._patched:
            cls.run = original
        self._patched.clear()
        return super().__exit__(*exc)


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

