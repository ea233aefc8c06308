"""Stop strings for streamed generation: emit text as soon as it cannot be the start of a stop string.

`feed` holds back the longest suffix of the pending text that is a prefix of some stop string, and on the
first completed stop string returns the text before it and reports the stop (the stop string itself and
anything after it are dropped, as llama.cpp's server does). `flush` releases what was held at the end.
Pieces must be complete text (the detokenizer's job is to hold back partial UTF-8 sequences).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import ArgumentTypeError


def stop_list(stop: Any) -> list[str]:
    """The Python API's `stop` argument as a list: None, one string (one stop string, as the server's `stop`
    takes it) or an iterable of strings; anything else is an ArgumentTypeError."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (bytes, dict)) or not isinstance(stop, Iterable):
        raise ArgumentTypeError(f"stop must be a string or a list of strings, got {stop!r:.60} ({type(stop).__name__})")
    stops = list(stop)
    for item in stops:
        if not isinstance(item, str):
            raise ArgumentTypeError(f"stop must be a string or a list of strings; it holds {item!r:.40} "
                                    f"({type(item).__name__})")
    return stops


class StopStringMatcher:
    def __init__(self, stops: Iterable[str] = ()):
        self.stops: list[str] = [stop for stop in dict.fromkeys(stops) if stop]  # dedupe, drop empty strings
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended generation, once stopped

    @property
    def held(self) -> str:
        """Text received but not yet emitted (a possible beginning of a stop string)."""
        return self._held

    def feed(self, text_piece: str) -> tuple[str, bool]:
        """Add a piece; returns (text safe to emit now, stopped?). After a stop, every call returns ("", True)."""
        if self.stopped:
            return "", True
        if not self.stops:
            return text_piece, False
        text = self._held + text_piece
        first, matched = -1, None
        for stop in self.stops:
            index = text.find(stop)
            if index != -1 and (first == -1 or index < first or (index == first and len(stop) > len(matched))):
                first, matched = index, stop
        if matched is not None:
            self.stopped, self.matched, self._held = True, matched, ""
            return text[:first], True
        hold = self._partial_suffix_length(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def _partial_suffix_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:length]):
                    best = length
                    break
        return best

    def flush(self) -> str:
        """Release held text at the end of generation (nothing if a stop string was found)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
