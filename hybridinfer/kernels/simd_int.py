"""Integer lanes for numba kernels: arithmetic on `simd_types.I32x16` (zeros, add, times a constant) and each
byte's low or high nibble. Plain LLVM IR, on any target.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .simd_types import _V16I32, I32x16, _splat, _splat_i32


@intrinsic
def zeros_i32(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V16I32, None)

    return I32x16(), codegen


@intrinsic
def add_i32(typingctx, a, b):
    """a + b, lane by lane (wrapping int32)."""
    if not (a == I32x16 and b == I32x16):
        return None

    def codegen(context, builder, signature, args):
        return builder.add(args[0], args[1])

    return I32x16(a, b), codegen


@intrinsic
def scale_i32(typingctx, value, factor):
    """I32x16 lanes times an integer constant (wrapping int32 arithmetic)."""
    if not (value == I32x16 and isinstance(factor, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        scalar = context.cast(builder, args[1], signature.args[1], types.int32)
        return builder.mul(args[0], _splat(builder, scalar, _V16I32))

    return I32x16(value, factor), codegen


def _bytewise(transform):
    @intrinsic
    def op(typingctx, value):
        if value != I32x16:
            return None

        def codegen(context, builder, signature, args):
            return transform(builder, args[0])

        return I32x16(value), codegen

    return op


low_nibbles = _bytewise(lambda b, v: b.and_(v, _splat_i32(0x0F0F0F0F)))
low_nibbles.__doc__ = "Each byte's low 4 bits (0..15) as a byte."
high_nibbles = _bytewise(lambda b, v: b.and_(b.lshr(v, _splat_i32(4)), _splat_i32(0x0F0F0F0F)))
high_nibbles.__doc__ = "Each byte's high 4 bits (0..15) as a byte."
