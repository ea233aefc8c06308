"""Device work captured once and replayed: a CUDA graph on CUDA, its recorded twin on the CPU device.

    graph = graphs.new()        # graphs = Graphs(device): one memory pool for all of a run's graphs
    graph.capture(work)         # work() queues its kernels; they run once, and are kept with the arguments they had
    graph.replay()              # the same kernels again: the same tensors (as they are now), the same numbers;
                                # none of work's Python runs

What a graph keeps is what a replay uses: tensors by address (a tensor made during the capture lives in the graph's
pool, made once), numbers by value. So work may not read a device value on the host, nor take a number that
changes between replays as an argument (a position is a device tensor), and it passes data to or from the host
only through fixed (pinned) buffers. `RecordedGraph` keeps to the same rules on the CPU device, where it replays
the Triton launches and the torch kernels it saw (`launches.KernelTrace`) with the arguments they had: a test there
of a replay against an eager run finds what a CUDA graph would get wrong.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils._pytree import tree_leaves

from .launches import KernelTrace, runs_a_kernel

HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default"}


class CUDAGraph:
    def __init__(self, pool):
        self.graph, self.pool = torch.cuda.CUDAGraph(), pool

    def capture(self, work: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph, pool=self.pool):
            work()
        self.graph.replay()  # a capture only records: the work runs now

    def replay(self) -> None:
        self.graph.replay()


class RecordedGraph:
    """The CPU device's twin: the kernels work ran (Triton launches, torch operators that write), kept as calls with
    their arguments; a replay makes each call again (a torch operator's result copied into the tensor the capture
    made for it, which later calls read)."""

    def __init__(self):
        self.calls: list[Callable[[], object]] = []

    def capture(self, work: Callable[[], None]) -> None:
        with _Recorder(self.calls):
            work()

    def replay(self) -> None:
        for call in self.calls:
            call()


class _Recorder(KernelTrace):
    def __init__(self, calls: list):
        super().__init__()
        self.calls = calls

    def triton_launch(self, name: str, launch: Callable[[], object]) -> None:
        self.calls.append(launch)

    def torch_op(self, func, args: tuple, kwargs: dict, result) -> None:
        if str(func) in HOST_READS:
            raise RuntimeError(f"captured device work read a device value on the host ({func}): a graph cannot")
        if not runs_a_kernel(func):
            return  # an allocation or a view: the capture's tensor is the replay's
        if func._schema.is_mutable:  # writes its arguments (copy_, add_, fill_, out=)
            self.calls.append(lambda: func(*args, **kwargs))
            return
        made = [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        self.calls.append(lambda: _copy_into(made, func(*args, **kwargs)))


def _copy_into(made: list[torch.Tensor], result) -> None:
    for held, value in zip(made, [t for t in tree_leaves(result) if isinstance(t, torch.Tensor)]):
        held.copy_(value)


class Graphs:
    """Makes the graphs of one run on `device`, sharing one memory pool (they replay in the order captured)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None

    def new(self) -> CUDAGraph | RecordedGraph:
        return CUDAGraph(self.pool) if self.cuda else RecordedGraph()
