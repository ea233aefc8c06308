"""An engine's calls one at a time: threads may share an `Engine` (`engine.py`), each call waiting for the other
threads' to end; a stream holds the engine from its first chunk until its last, or until it is closed."""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import HybridInferError


class OneAtATime:
    """An engine's lock. The thread that holds it may call in again (the steps of a generation, logits inside
    `every_neuron`), except while its stream waits for the next request of a chunk: a call then would wait for
    itself forever (and rewrite the cache the stream reads), so it is refused."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holder: int | None = None
        self._stream_waiting = False

    @contextmanager
    def held(self, call: str) -> Iterator[None]:
        if self._holder == threading.get_ident():
            if self._stream_waiting:
                raise HybridInferError(f"{call}() was called while a stream of this engine is still open in the same "
                                       "thread: iterate that stream to its end or close() it first (or load a "
                                       "second engine)")
            yield
            return
        with self._lock:
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None

    @contextmanager
    def stream_waits(self) -> Iterator[None]:
        """While the holder's stream has handed out a chunk and waits to be asked for the next."""
        self._stream_waiting = True
        try:
            yield
        finally:
            self._stream_waiting = False


def one_at_a_time(method):
    """`method` run holding its engine's lock (`OneAtATime`)."""
    @functools.wraps(method)
    def holding(engine, *args, **kwargs):
        with engine._calls.held(method.__name__):
            return method(engine, *args, **kwargs)
    return holding
