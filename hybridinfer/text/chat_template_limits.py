"""Resource limits for rendering untrusted Jinja chat templates (a GGUF's `tokenizer.chat_template`).

jinja's sandbox keeps a template away from Python internals, but not from hanging the process or
allocating gigabytes. `render` adds:

- a wall-clock deadline, checked by a `sys.settrace` tracer on every line of template code and on every
  Python call made while rendering (so loops with empty bodies stop too);
- a cap on the output, counted as it streams, and on every string, list or dict the template builds:
  arithmetic operators, and the str methods and filters that can grow their input (center, ljust,
  replace, join, format, indent, wordwrap, ...), are checked before they compute; every call, filter,
  `~` concatenation, list / tuple / dict literal and captured block (macro body, `{% set %}` block)
  after;
- caps on `range`, integer size, nested calls (macro recursion) and container nesting (CPython's `hash`
  of a tuple nested ~10**5 deep overflows the C stack).

Values the template cannot enlarge by more than a constant factor (upper, escape, ...) are only checked
after. A violation raises `TemplateLimitError`: a BaseException, so that none of jinja's `except Exception`
handlers between the violation and `render`'s caller swallows it.
"""

from __future__ import annotations

import functools
import itertools
import re
import sys
import threading
import time
import types
from typing import Any, Callable

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from markupsafe import Markup

from .chat_template_sizes import (FILTER_SIZE, MAX_CALL_DEPTH, MAX_INT_BITS, MAX_OUTPUT_CHARS, MAX_RANGE, MAX_SECONDS,
                                  MAX_VALUE_CHARS, READ_TWICE, TemplateLimitError, clamped_int, measure, printf_size,
                                  size_of, str_method_size, text_length, too_big)

_FOLD_LIMIT = 4096  # jinja folds constant filter calls at compile time; larger results wait for the render

TEMPLATE_FILENAME = "<template>"  # co_filename of jinja-compiled template code (Environment.from_string)


class _State(threading.local):
    rendering = False  # in render's output loop (not while jinja compiles and folds constants)
    depth = 0  # nested sandbox calls


_state = _State()


def render(compile_template: Callable[[], jinja2.Template], context: dict) -> str:
    """Compile (compile_template()) and render under the limits."""
    parts: list[str] = []
    with _Deadline(MAX_SECONDS):
        template = compile_template()
        _state.rendering, _state.depth = True, 0
        stream = template.generate(**context)
        try:
            size = 0
            for part in stream:
                size += len(part)
                if size > MAX_OUTPUT_CHARS:
                    raise TemplateLimitError(f"the template's output passed {MAX_OUTPUT_CHARS:,} characters")
                parts.append(part)
        finally:
            _state.rendering = False
            stream.close()
    return "".join(parts)


class _Deadline:
    """`with _Deadline(s):` raises TemplateLimitError in the code running inside once `s` seconds have passed.

    The global trace function sees every Python call; it gives a line tracer only to template code (library
    code gets no line events, which keeps the cost down). CPython drops a trace function that raises, so the
    error must reach the caller: hence a BaseException. The previous tracer (debugger, coverage) comes back
    on exit.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        message = f"the template ran longer than {self.seconds:g} s"
        end = time.monotonic() + self.seconds

        # (defaults are the fastest lookups: these run on every call and on every line of template code)
        def line_tracer(frame, event, arg, clock=time.monotonic, end=end):
            if clock() > end:
                raise TemplateLimitError(message)
            return line_tracer

        def call_tracer(frame, event, arg, clock=time.monotonic, end=end, template=TEMPLATE_FILENAME):
            if clock() > end:
                raise TemplateLimitError(message)
            return line_tracer if frame.f_code.co_filename == template else None

        self.previous = sys.gettrace()
        sys.settrace(call_tracer)
        return self

    def __exit__(self, *exc_info):
        sys.settrace(self.previous)


# ----------------------------------------------------------------------------------------------------------
# Sizes

def _limit_filter(name: str, func: Callable) -> Callable:
    estimate = FILTER_SIZE.get(name)
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # the context / environment jinja passes first
    what = f"the {name} filter"

    def checked(limit: int, args: tuple, kwargs: dict):
        for arg in itertools.chain(args[skip + 1 :], kwargs.values()):
            if type(arg) is int and arg > limit:  # a width, a count, ...
                raise too_big(what)
        if estimate is not None and len(args) > skip:
            if name in READ_TWICE and not isinstance(args[skip], (str, list, tuple, dict)):
                args = (*args[:skip], list(args[skip]), *args[skip + 1 :])
            try:
                size = estimate(*args[skip:], **kwargs)
            except (TypeError, ValueError, AttributeError):
                size = 0  # bad arguments: the filter itself reports them
            if size > limit:
                raise too_big(what)
        result = func(*args, **kwargs)
        if size_of(result) > limit:
            raise too_big(what)
        return result

    @functools.wraps(func)  # keeps jinja_pass_arg
    def limited(*args, **kwargs):
        if _state.rendering:
            return checked(MAX_VALUE_CHARS, args, kwargs)
        try:  # jinja folding a constant expression at compile time: only into a small constant
            return checked(_FOLD_LIMIT, args, kwargs)
        except TemplateLimitError:
            raise nodes.Impossible() from None

    return limited


# ----------------------------------------------------------------------------------------------------------
# The environment


class _LimitedFormatter(SandboxedFormatter):
    """str.format: widths / precisions, and the length of the fields so far."""

    def vformat(self, format_string, args, kwargs):
        self.size_of = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value, format_spec):
        if any(clamped_int(digits) > MAX_VALUE_CHARS for digits in re.findall(r"\d+", format_spec)):
            raise too_big("str.format")
        self.size_of += measure(value)
        if self.size_of > MAX_VALUE_CHARS:
            raise too_big("str.format")
        text = super().format_field(value, format_spec)
        self.size_of += len(text)
        return text


class _LimitedEscapeFormatter(_LimitedFormatter, SandboxedEscapeFormatter):
    pass


class _LimitedCodeGenerator(CodeGenerator):
    """Routes `~`, list / tuple / dict literals and comparisons through the environment's checks."""

    @optimizeconst
    def visit_Concat(self, node, frame):
        if frame.eval_ctx.volatile:  # the join function jinja's own visit_Concat picks
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        else:
            join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
        self.write(f"environment.limited_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _checked(self, visit, node, frame):
        self.write("environment.limited_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node, frame):
        self._checked(super().visit_List, node, frame)

    def visit_Dict(self, node, frame):
        self._checked(super().visit_Dict, node, frame)

    def visit_Tuple(self, node, frame):
        if node.ctx != "load":  # an assignment target
            return super().visit_Tuple(node, frame)
        self._checked(super().visit_Tuple, node, frame)

    def visit_Compare(self, node, frame):
        # a Python call between comparisons, each up to ~1 ms of C (big equal lists), for the deadline tracer
        self.write("environment.checkpoint(")
        super().visit_Compare(node, frame)
        self.write(")")


def _range(*args: int) -> range:
    numbers = range(*args)
    try:
        too_long = len(numbers) > MAX_RANGE
    except OverflowError:  # longer than sys.maxsize
        too_long = True
    if too_long:
        raise TemplateLimitError(f"the template asked for a range of more than {MAX_RANGE:,} numbers")
    return numbers


def _call_name(obj: Any) -> str:
    name = getattr(obj, "__name__", None) or getattr(obj, "name", None)  # functions and methods / macros
    return f"{name}()" if isinstance(name, str) else "a call"


def _big_int(operator: str) -> TemplateLimitError:
    return TemplateLimitError(f"the template built a number of more than {MAX_INT_BITS:,} bits ({operator})")


_DATA = (str, bytes, bytearray, int, float, list, tuple, dict)
_METHODS = (types.BuiltinMethodType, types.MethodType, types.MethodWrapperType)


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox under the limits above. Call `limit_filters()` once all filters are set."""

    # every arithmetic operator goes through call_binop (which also stops jinja folding them at compile time)
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = _LimitedCodeGenerator

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.globals["range"] = _range
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs

    def limit_filters(self) -> None:
        self.filters = {name: _limit_filter(name, func) for name, func in self.filters.items()}

    def call_binop(self, context, operator, left, right):
        if operator == "+":
            if type(left) is str and type(right) is str:  # the common case: building the prompt
                if len(left) + len(right) > MAX_VALUE_CHARS:
                    raise too_big("+")
                return left + right
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if len(left) + len(right) > MAX_VALUE_CHARS:
                    raise too_big("+")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and n > 0 and isinstance(seq, (str, bytes, list, tuple)):
                    size = len(seq) if isinstance(seq, (str, bytes)) else measure(seq, MAX_VALUE_CHARS // n + 1)
                    if size * n > MAX_VALUE_CHARS:
                        raise too_big("*")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _big_int("*")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if left.bit_length() * right > MAX_INT_BITS:
                    raise _big_int("**")
        elif operator == "%" and isinstance(left, (str, bytes)):
            if printf_size(left, right) > MAX_VALUE_CHARS:
                raise too_big("%")
        result = self.binop_table[operator](left, right)
        if isinstance(result, (list, tuple)) and measure(result) > MAX_VALUE_CHARS:  # strings: checked above
            raise too_big(operator)
        return result

    def call(__self, __context, __obj, /, *args, **kwargs):  # every call a template makes
        if isinstance(__obj, _METHODS) and isinstance(getattr(__obj, "__self__", None), _DATA):
            args = __self._check_method(__obj, args, kwargs)
        if _state.depth >= MAX_CALL_DEPTH:
            raise TemplateLimitError(f"the template nested macro calls more than {MAX_CALL_DEPTH} deep")
        _state.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            _state.depth -= 1
        if size_of(result) > MAX_VALUE_CHARS:
            raise too_big(_call_name(__obj))
        return result

    @staticmethod
    def _check_method(method: Any, args: tuple, kwargs: dict) -> tuple:
        """'a'.ljust(n), s.replace(a, b), (1).to_bytes(n), ...: refused before they run if too big."""
        name, owner = method.__name__, method.__self__
        if name == "join" and args and not isinstance(args[0], (list, tuple, str)):
            args = (list(args[0]), *args[1:])  # read twice: by the estimate, then by join
        if any(type(a) is int and a > MAX_VALUE_CHARS for a in itertools.chain(args, kwargs.values())):
            raise too_big(f"{name}()")
        if isinstance(owner, (str, bytes)):
            try:
                size = str_method_size(name, owner, args, kwargs)
            except (TypeError, ValueError, AttributeError, IndexError):
                size = 0  # bad arguments: the method itself reports them
            if size > MAX_VALUE_CHARS:
                raise too_big(f"{name}()")
        return args

    def wrap_str_format(self, value: Any):
        """jinja's own, with the size-checking formatters."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)):
            return None
        if value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        f_self = value.__self__
        str_type, is_format_map = type(f_self), value.__name__ == "format_map"
        if isinstance(f_self, Markup):
            formatter: SandboxedFormatter = _LimitedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _LimitedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                args, kwargs = (), args[0]
            return str_type(formatter.vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def concat(self, parts) -> str:  # captured output: macro bodies, {% set %} / {% filter %} blocks, blocks
        kept, size = [], 0
        for part in parts:
            size += len(part)
            if size > MAX_VALUE_CHARS:
                raise too_big("a macro's or block's output")
            kept.append(part)
        return "".join(kept)

    def limited_join(self, join: Callable, parts: tuple) -> str:  # a ~ b
        if sum(text_length(part) for part in parts) > MAX_VALUE_CHARS:
            raise too_big("~")
        return join(parts)

    def limited_value(self, value: Any) -> Any:  # list / tuple / dict literals
        if size_of(value) > MAX_VALUE_CHARS:
            raise too_big("a literal")
        return value

    def checkpoint(self, value: Any) -> Any:
        return value
