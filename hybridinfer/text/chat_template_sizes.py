"""The limits a chat template renders under, and upper bounds on the size of what a call will build.

`chat_template_limits.py` enforces them; the estimates here let it refuse a call (a filter, a str method, an
operator) before it allocates, from its arguments alone.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any, Callable

from jinja2.runtime import Namespace

MAX_SECONDS = 2.0  # wall time of one render, compilation included
MAX_OUTPUT_CHARS = 1 << 20  # the rendered prompt (~250k tokens)
MAX_VALUE_CHARS = 1 << 20  # any one string, list or dict the template builds (a container: its repr's length)
MAX_INT_BITS = 1 << 16  # any one integer (~20k decimal digits)
MAX_RANGE = 10_000  # numbers in one range(...)
MAX_CALL_DEPTH = 50  # nested calls: macros, caller(), recursive loops, blocks
MAX_NESTING = 100  # containers inside containers



class TemplateLimitError(BaseException):
    """A template went past one of the limits; the message says which."""


def too_big(what: str) -> TemplateLimitError:
    return TemplateLimitError(f"the template built a value larger than {MAX_VALUE_CHARS:,} characters ({what})")


_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINERS = (list, tuple, set, frozenset, *_VIEWS)


def measure(value: Any, limit: int | None = None, per_item: int = 0, per_level: int = 0) -> int:
    """Roughly len(repr(value)), every reference counted again (as str(), == and hash() walk them); stops
    once past `limit`. `per_item` / `per_level` add separator / indentation lengths (tojson).
    Raises TemplateLimitError for containers nested more than MAX_NESTING deep."""
    limit = MAX_VALUE_CHARS if limit is None else limit
    total = 0
    stack: list[Any] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            total += 2 + per_item + per_level * len(stack)
            child = None
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, dict):
                child = itertools.chain.from_iterable(item.items())
            elif isinstance(item, _CONTAINERS):
                child = iter(item)
            elif isinstance(item, Namespace):
                child = itertools.chain.from_iterable(getattr(item, "_Namespace__attrs", {}).items())
            elif isinstance(item, int):
                total += item.bit_length() // 3
            elif isinstance(item, (bytes, bytearray)):
                total += len(item)
            else:
                total += 6
            if total > limit:
                return total
            if child is not None:
                if len(stack) > MAX_NESTING:
                    raise TemplateLimitError(f"the template nested lists or dicts more than {MAX_NESTING} deep")
                stack.append(child)
                break
        else:
            stack.pop()
    return total


def size_of(value: Any) -> int:
    """len() of a string; measure() of a container; 0 for anything else (numbers, macros, ...)."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, (dict, Namespace, *_CONTAINERS)):
        return measure(value)
    return 0


def text_length(value: Any) -> int:  # len(str(value)), roughly
    return len(value) if isinstance(value, str) else measure(value)


def clamped_int(digits: str) -> int:
    return int(digits) if len(digits) < 10 else 1 << 40


_PRINTF_SPEC = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def printf_size(fmt: str | bytes, args: Any) -> int:
    """An upper bound on len(fmt % args): widths, precisions, and each value as often as it is named."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    size = len(fmt) + measure(args)
    stars = sum(abs(a) for a in (args if isinstance(args, tuple) else (args,)) if type(a) is int)
    for key, width, precision in _PRINTF_SPEC.findall(fmt):
        for number in (width, precision):
            size += stars if number == "*" else clamped_int(number) if number else 0
        if key and isinstance(args, Mapping) and key in args:
            size += measure(args[key])
        if size > MAX_VALUE_CHARS:
            break
    return size


def replace_size(s: Any, old: Any, new: Any, count: Any = -1) -> int:
    s, old, new = (x if isinstance(x, (str, bytes)) else str(x) for x in (s, old, new))
    times = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        times = min(times, count)
    return len(s) + times * max(len(new) - len(old), 0)


def join_size(separator: Any, items: Any) -> int:
    return sum(text_length(item) for item in items) + len(str(separator)) * max(len(items) - 1, 0)


# The filters and str methods whose result can outgrow their input by more than a constant factor: an
# upper bound on the result's length from the arguments (jinja's signatures, less the context it passes).


def _indent_size(s, width=4, first=False, blank=False):
    return len(s) + (s.count("\n") + 1) * (width if type(width) is int else len(str(width)))


def _wordwrap_size(s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    lines = len(s.split()) + len(s) // max(width, 1) + s.count("\n") + 1
    return len(s) + lines * len(wrapstring or "\n")


def _urlize_size(value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None):
    return 10 * len(value) + (len(value) // 2 + 1) * (len(str(target or "")) + len(str(rel or "")) + 40)


def _tojson_size(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    indent = len(indent) if isinstance(indent, str) else indent or 0
    separator = sum(len(str(part)) for part in separators) if separators else 0
    return measure(value, per_item=separator + (1 if indent else 0), per_level=indent)


def _padding_size(value, count, fill_with=None):  # batch, slice: up to `count` copies of fill_with
    return 0 if fill_with is None else count * (measure(fill_with) + 2)


def _sum_size(iterable, attribute=None, start=0):  # sum(lists, start=[]) concatenates
    return measure(start) + sum(measure(x) for x in iterable) if isinstance(start, (list, tuple)) else 0


FILTER_SIZE: dict[str, Callable[..., int]] = {
    "center": lambda value, width=80: max(text_length(value), width),
    "indent": _indent_size,
    "format": lambda value, *args, **kwargs: printf_size(str(value), kwargs or args),
    "replace": replace_size,
    "join": lambda value, d="", attribute=None: join_size(d, value),
    "wordwrap": _wordwrap_size,
    "truncate": lambda s, length=255, killwords=False, end="...", leeway=None: len(s) + len(end),
    "urlize": _urlize_size,
    "tojson": _tojson_size,
    "pprint": lambda value: measure(value, per_item=2, per_level=1),
    "batch": _padding_size,
    "slice": _padding_size,
    "sum": _sum_size,
}
READ_TWICE = {"join", "sum"}  # filters whose iterable the estimate reads too: made a list first


def str_method_size(name: str, s: str | bytes, args: tuple, kwargs: dict) -> int:
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(len(s), args[0])
    if name == "expandtabs":
        tab = "\t" if isinstance(s, str) else b"\t"
        return len(s) + s.count(tab) * (args[0] if args else kwargs.get("tabsize", 8))
    if name == "replace":
        return replace_size(s, *args, **kwargs)
    if name == "join":
        return join_size(s, args[0])
    if name == "translate" and isinstance(args[0], Mapping):
        return len(s) * max([1] + [text_length(v) for v in args[0].values() if v is not None])
    if name == "encode":
        return 4 * len(s)
    return 0
