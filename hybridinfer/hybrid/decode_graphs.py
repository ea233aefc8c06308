"""One decoded token of a hybrid run as captured device work: each part's steps (`Device`, `Host`), the device
steps between two host steps captured as one graph (`gpu/graphs.py`: a CUDA graph on CUDA) once a first token has
run them eagerly, then replayed: per token a few graph launches per layer instead of each kernel's, and none of the
parts' Python.

    part.decode_steps(index) -> [Device(run), Host(run), ...]   one token's work of a part, in order (run(s))
    Device   queues device work only: no host read or wait; numbers that stay the same from token to token; the
             position read from the device (`GPUSide.position`, advanced by the token's last GPU layer); data to or
             from the host through fixed buffers only (`GPUSide.stream_host`, the split FFN's packets)
    Host     runs on the host each token: the CPU's work, waits for the device, the fixed buffers' host side

A part's one-token call runs its steps in order (`run_steps`): the eager path and the captured one are the same
steps. A graph keeps the tensor its steps leave in s.on_device, which a replay puts back.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

from ..errors import HybridInferError
from ..finite_check import non_finite_error, require_finite
from ..gpu.graphs import Graphs
from ..model_file.tensor_shapes import block_name

ENV_VAR = "HYBRIDINFER_GPU_GRAPHS"


@dataclass(frozen=True)
class Device:
    run: Callable


@dataclass(frozen=True)
class Host:
    run: Callable


def run_steps(steps: list, s) -> object:
    """Run the steps eagerly, in order; the last one's result."""
    result = None
    for step in steps:
        result = step.run(s)
    return result


def graphs_wanted(side) -> bool:
    """$HYBRIDINFER_GPU_GRAPHS "1" or "0"; unset: on with CUDA and the Triton kernels (the torch twins read the
    position on the host: they cannot be captured)."""
    wanted = os.environ.get(ENV_VAR)
    if wanted not in (None, "", "0", "1"):
        raise HybridInferError(f"${ENV_VAR} is {wanted!r}: set it to 1 (capture the decode step) or 0 (run it eagerly)")
    if wanted == "1" and side.kernels_name != "triton":
        raise HybridInferError(f"${ENV_VAR}=1 needs the Triton kernels (--gpu-kernels triton)")
    if wanted in (None, ""):
        return side.device.type == "cuda" and side.kernels_name == "triton"
    return wanted == "1"


class Segment:
    """Consecutive device steps: run eagerly, then captured as one graph, then replayed."""

    def __init__(self, steps: list[tuple[int | None, Device]]):
        self.steps = steps
        self.graph = None
        self.input = self.output = None  # s.on_device before and after, as captured

    def run(self, s, graphs: Graphs | None, clock) -> bool:
        """Whether it replayed."""
        if self.graph is not None:
            if s.on_device is not self.input:
                raise RuntimeError("a captured segment met another residual stream tensor than it was captured with")
            started = clock.start()
            self.graph.replay()
            clock.stop("gpu", started)
            s.on_device = self.output
            return True
        if graphs is None:
            for _, step in self.steps:
                step.run(s)
            return False
        self.input, graph = s.on_device, graphs.new()
        with clock.paused():
            graph.capture(lambda: [step.run(s) for _, step in self.steps])
        self.graph, self.output = graph, s.on_device
        return False


class GraphedDecode:
    """The one-token forward pass of `layers` (each a tuple of parts) and `output` over the GPU side `side`: the
    first token eager, the second captured, the later ones replayed."""

    def __init__(self, side, layers: list[tuple], output):
        self.side, self.layers = side, layers
        self.graphs = Graphs(side.device)
        self.tokens = 0
        self.replays = 0  # graphs replayed, summed over the tokens
        self.failed: str | None = None  # why a capture failed: the run decodes eagerly since
        steps = [(index, step) for index, parts in enumerate(layers) for part in parts
                 for step in part.decode_steps(index)]
        steps += [(None, step) for step in output.decode_steps()]
        self.plan: list[Segment | tuple[int | None, Host, bool]] = []  # a host step: (layer, step, its layer's last)
        for at, (index, step) in enumerate(steps):
            if isinstance(step, Host):
                last = index is not None and (at + 1 == len(steps) or steps[at + 1][0] != index)
                self.plan.append((index, step, last))
            elif self.plan and isinstance(self.plan[-1], Segment):
                self.plan[-1].steps.append((index, step))
            else:
                self.plan.append(Segment([(index, step)]))

    @property
    def segments(self) -> list[Segment]:
        return [item for item in self.plan if isinstance(item, Segment)]

    def __call__(self, s) -> object:
        """The logits of the token in s (one token at s.start_pos), as the output part returns them."""
        side = self.side
        side.at_position(s.start_pos)  # written outside any graph, where the device does not hold it already
        graphs = self.graphs if self.tokens > 0 and self.failed is None else None  # the first token: eager, as it
        result, index = None, None  # compiles and sizes what it launches
        try:
            for item in self.plan:
                if isinstance(item, Segment):
                    index = item.steps[-1][0]
                    graphs = self._run(item, s, graphs)
                    continue
                index, step, last = item
                result = step.run(s)
                if last and s.on_device is None:  # a layer ended on the CPU, checked as the decoder's loop checks
                    require_finite(s.x, f"layer {index} ({block_name('*', index)})", s.start_pos)
        except ZeroDivisionError:
            where = "the output" if index is None else f"layer {index} ({block_name('*', index)})"
            raise non_finite_error(where, s.start_pos) from None
        if side.layers:
            side.advanced(s.start_pos)  # by the last GPU layer's attention, captured or not
        self.tokens += 1
        return result

    def _run(self, segment: Segment, s, graphs: Graphs | None) -> Graphs | None:
        """Run (capture, replay) a segment; a capture that fails (a CUDA error) costs only speed: said once on
        stderr, that segment and every later one run eagerly. The graphs to use next."""
        try:
            self.replays += segment.run(s, graphs, self.side.clock)
            return graphs
        except RuntimeError as error:
            if graphs is None or segment.graph is not None or not graphs.cuda:  # the CPU twin's capture has run
                raise  # what it recorded: a failure there is a bug, for the tests to find
            self.failed = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"hybridinfer: capturing the decode step as CUDA graphs failed ({self.failed}); decoding without "
                  f"them (set {ENV_VAR}=0 to skip the attempt)", file=sys.stderr)
            for item in self.segments:
                item.graph = None
            segment.run(s, None, self.side.clock)  # what the capture recorded has not run
            return None
