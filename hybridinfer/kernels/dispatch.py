"""Format dispatch inside numba code: `product` and `accumulate` pick one kernel for a weight's format code and
activation type, both compile-time constants, so that a run compiles only the kernels of the formats it reads.

Callers are numba functions made for fixed formats (`cpu_layer`'s blocks, `cpu_quant`'s entry points from Python:
`variants.specialization`), which pass the codes as closure constants: numba types those as literals, and the
overloads below resolve to one kernel each.
A weight is passed as (code, raw): its format code (`formats.py`) and its bytes as a (rows, bytes) uint8 array
(`PackedMatrix.raw`), viewed back here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import errors
from numba.extending import overload

from .cpu_accumulate_int8 import int8_accumulate
from .float_rows import float_accumulate, float_dot_rows
from .formats import FORMAT_CODE, FORMAT_OF_CODE
from .packed import FLOAT_DTYPES
from .quant_accumulate import quant_float_accumulate
from .quant_dot import dot_rows

_FLOAT_VIEWS = {FORMAT_CODE[qtype]: dtype for qtype, dtype in FLOAT_DTYPES.items()}  # how float weights' bytes are read
ALL_ROWS = np.zeros(0, dtype=np.int64)  # the `rows` argument of a dense product


def product(code, raw, act, rows, dense, float_activations, out):
    """out (T, k) = act.x @ W[r].T over r = all rows (dense) or rows[:k]; act: `cpu_quant.Activations`.
    Callable from numba code only, with constant `code` and `float_activations`."""
    raise NotImplementedError("dispatch.product runs inside numba code")


def accumulate(code, raw, cols, rows, coeffs, out, chunks, float_activations):
    """out (cols,) = sum_k coeffs[k] * W_t[rows[k]] (S3 over the transposed down projection), the rows shared
    among `chunks` threads; quantized formats with int8 coefficients unless `float_activations`. Not for the
    K-quants, whose transposes are kept in 32-block formats (`requantize.py`).
    Callable from numba code only, with constant `code` and `float_activations`."""
    raise NotImplementedError("dispatch.accumulate runs inside numba code")


def _constants(code, float_activations) -> tuple[int, bool]:
    if not isinstance(code, types.IntegerLiteral) or not isinstance(float_activations, types.BooleanLiteral):
        raise errors.TypingError("the format code and float_activations must be compile-time constants")
    return code.literal_value, float_activations.literal_value


@overload(product, prefer_literal=True)
def _product(code, raw, act, rows, dense, float_activations, out):
    """One compiled kernel per format and activation type serves the dense and the gathered products alike: a
    dense call passes `dense` as a plain bool (`bool()` of the literal its caller wrote) and a writable empty array for
    the read-only ALL_ROWS, so that both calls have one signature (each compilation of a quantized kernel takes
    seconds; the `dense` branches cost nothing measurable at run time)."""
    fmt, floats = _constants(code, float_activations)
    if fmt in _FLOAT_VIEWS:
        view = _FLOAT_VIEWS[fmt]
        kernel = lambda raw, act, dense, rows, out: float_dot_rows(raw.view(view), act.x, dense, rows, out)  # noqa: E731
    else:
        quantized = dot_rows(fmt, floats)
        kernel = lambda raw, act, dense, rows, out: quantized(  # noqa: E731
            raw, act.x.shape[1] // 32, act.xp, act.xsum, act.qx, act.dx, act.qsum, dense, rows, out)
    kernel = njit(inline="always")(kernel)
    if isinstance(rows, types.Array) and not rows.mutable:  # ALL_ROWS: a dense product
        return lambda code, raw, act, rows, dense, float_activations, out: kernel(
            raw, act, bool(dense), np.empty(0, np.int64), out)
    return lambda code, raw, act, rows, dense, float_activations, out: kernel(raw, act, bool(dense), rows, out)


@overload(accumulate, prefer_literal=True)
def _accumulate(code, raw, cols, rows, coeffs, out, chunks, float_activations):
    fmt, floats = _constants(code, float_activations)
    if FORMAT_OF_CODE[fmt].k_quant:
        raise errors.TypingError(f"S3 reads 32-block formats: a {FORMAT_OF_CODE[fmt].name} weight's transpose is "
                                 f"{FORMAT_OF_CODE[fmt].transpose_type.name} (`requantize.py`)")
    if fmt in _FLOAT_VIEWS:
        view = _FLOAT_VIEWS[fmt]
        return lambda code, raw, cols, rows, coeffs, out, chunks, float_activations: float_accumulate(
            raw.view(view), rows, coeffs, out, chunks)
    kernel = quant_float_accumulate(fmt) if floats else int8_accumulate(fmt)
    return lambda code, raw, cols, rows, coeffs, out, chunks, float_activations: kernel(
        raw, cols // 32, rows, coeffs, out, chunks)
