"""16-bit floats in numba kernels: float32 from IEEE half (F16) and bfloat16 (BF16) bits, and IEEE half bits from
float32. numba has no float16 arithmetic on the CPU, so F16 is stored as int16 bits and BF16 as uint16 bits.

Half -> float is one instruction where the target converts halves (vcvtph2ps with F16C, fcvtl on NEON), else
integer arithmetic; float -> half is always integer and float32 arithmetic. Never a libcall: LLVM would call
__extendhfsf2 / __truncsfhf2, which numba's JIT cannot link.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .cpu_target import TARGET
from .simd_types import _F16, _F32, _I16, _I32

NATIVE_HALF = TARGET.has("f16c") or TARGET.has("neon")  # half -> float in hardware (vcvtph2ps, fcvtl)


def _half_to_float(builder, bits):
    """float32 of IEEE half bits (an i16 or a vector of them): one instruction where the target converts halves,
    else integer arithmetic (LLVM would call __extendhfsf2, which numba's JIT cannot link)."""
    count = bits.type.count if isinstance(bits.type, ir.VectorType) else None

    def typed(element):
        return ir.VectorType(element, count) if count else element

    def constant(element, value):
        return ir.Constant(typed(element), [value] * count if count else value)

    if NATIVE_HALF:
        return builder.fpext(builder.bitcast(bits, typed(_F16)), typed(_F32))
    word = builder.zext(bits, typed(_I32))
    sign = builder.shl(builder.and_(word, constant(_I32, 0x8000)), constant(_I32, 16))
    magnitude = builder.and_(word, constant(_I32, 0x7FFF))
    shifted = builder.shl(magnitude, constant(_I32, 13))  # exponent and mantissa in float32's places
    finite = builder.fmul(builder.bitcast(shifted, typed(_F32)), constant(_F32, 2.0 ** 112))  # rebias 15 -> 127
    special = builder.bitcast(builder.or_(shifted, constant(_I32, 0x7F800000)), typed(_F32))  # inf, NaN
    value = builder.select(builder.icmp_unsigned(">=", magnitude, constant(_I32, 0x7C00)), special, finite)
    return builder.bitcast(builder.or_(builder.bitcast(value, typed(_I32)), sign), typed(_F32))


@intrinsic
def as_float32(typingctx, value):
    """A stored float element -> float32: float32 as is, int16 as IEEE half bits (F16), uint16 as bfloat16 bits.

    Scalar, but loops over contiguous rows of it vectorize (vcvtph2ps for F16, a shift for BF16)."""
    if value == types.float32:
        return types.float32(value), lambda context, builder, signature, args: args[0]
    if value == types.int16:
        def f16(context, builder, signature, args):
            return _half_to_float(builder, args[0])

        return types.float32(value), f16
    if value == types.uint16:
        def bf16(context, builder, signature, args):
            return builder.bitcast(builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16)), _F32)

        return types.float32(value), bf16
    return None


@intrinsic
def half_bits(typingctx, value):
    """float32 -> its IEEE half (float16, rounded to nearest even as numpy's astype) as int16 bits: what
    `as_float32` reads back. numba has no float16 arithmetic on the CPU, so float16 arrays are stored as int16.

    Integer and float32 arithmetic only (FP16's fp16_ieee_from_fp32_value: the float multiplies round the
    mantissa), never LLVM's half type: without F16C LLVM would call __truncsfhf2, which numba's JIT cannot link."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        def word(number):
            return ir.Constant(_I32, number)

        f = args[0]
        w = builder.bitcast(f, _I32)
        magnitude = builder.bitcast(builder.and_(w, word(0x7FFFFFFF)), _F32)
        base = builder.fmul(builder.fmul(magnitude, ir.Constant(_F32, 2.0 ** 112)), ir.Constant(_F32, 2.0 ** -110))
        doubled = builder.add(w, w)  # the sign shifted out
        bias = builder.and_(doubled, word(0xFF000000))
        bias = builder.select(builder.icmp_unsigned("<", bias, word(0x71000000)), word(0x71000000), bias)
        rounder = builder.bitcast(builder.add(builder.lshr(bias, word(1)), word(0x07800000)), _F32)
        bits = builder.bitcast(builder.fadd(rounder, base), _I32)
        exponent = builder.and_(builder.lshr(bits, word(13)), word(0x00007C00))
        finite = builder.add(exponent, builder.and_(bits, word(0x00000FFF)))
        nan = builder.icmp_unsigned(">", doubled, word(0xFF000000))
        sign = builder.lshr(builder.and_(w, word(0x80000000)), word(16))
        return builder.trunc(builder.or_(sign, builder.select(nan, word(0x7E00), finite)), _I16)

    return types.int16(value), codegen
