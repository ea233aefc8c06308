"""Float lanes for numba kernels: arithmetic on `simd_types.F32x16` (zeros, splat, add, mul, fused multiply-add,
horizontal sum), I32x16 converted to float, and one lane spread over four (a block's scale over its 4-byte group).
Plain LLVM IR, on any target.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .simd_types import _I32, _V16F32, F32x16, I32x16, _function, _splat


@intrinsic
def zeros_f32(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V16F32, None)

    return F32x16(), codegen


@intrinsic
def splat_f32(typingctx, value):
    """F32x16 with every lane = value."""
    if not isinstance(value, types.Number):
        return None

    def codegen(context, builder, signature, args):
        scalar = context.cast(builder, args[0], signature.args[0], types.float32)
        return _splat(builder, scalar, _V16F32)

    return F32x16(value), codegen


def _binary_float(operation):
    @intrinsic
    def op(typingctx, a, b):
        if not (a == F32x16 and b == F32x16):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, operation)(args[0], args[1])

        return F32x16(a, b), codegen

    return op


add = _binary_float("fadd")
mul = _binary_float("fmul")


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, lane by lane (one rounding)."""
    if not (a == F32x16 and b == F32x16 and c == F32x16):
        return None

    def codegen(context, builder, signature, args):
        fn = _function(builder, "llvm.fma.v16f32", _V16F32, [_V16F32] * 3)
        return builder.call(fn, list(args))

    return F32x16(a, b, c), codegen


@intrinsic
def hsum(typingctx, value):
    """float32 sum of the 16 lanes (pairwise tree)."""
    if value != F32x16:
        return None

    def codegen(context, builder, signature, args):
        vector, lanes = args[0], 16
        while lanes > 1:
            lanes //= 2
            low = builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(_I32, lanes), list(range(lanes))))
            high = builder.shuffle_vector(vector, vector,
                                          ir.Constant(ir.VectorType(_I32, lanes), list(range(lanes, 2 * lanes))))
            vector = builder.fadd(low, high)
        return builder.extract_element(vector, ir.Constant(_I32, 0))

    return types.float32(value), codegen


@intrinsic
def to_f32(typingctx, value):
    """I32x16 lanes converted to float."""
    if value != I32x16:
        return None

    def codegen(context, builder, signature, args):
        return builder.sitofp(args[0], _V16F32)

    return F32x16(value), codegen


@intrinsic
def expand4(typingctx, value):
    """Four F32x16 whose lanes repeat each lane of `value` four times: result k lane l = value[4k + l // 4].

    Matches a 64-byte group of 16 blocks x 4 consecutive bytes to the 16 per-block scales."""
    if value != F32x16:
        return None

    def codegen(context, builder, signature, args):
        parts = []
        for k in range(4):
            order = ir.Constant(ir.VectorType(_I32, 16), [4 * k + lane // 4 for lane in range(16)])
            parts.append(builder.shuffle_vector(args[0], args[0], order))
        return context.make_tuple(builder, signature.return_type, parts)

    return types.UniTuple(F32x16, 4)(value), codegen
