"""Bytes and nibbles of `simd_types.I32x16` widened to float planes for numba kernels: plane j holds byte (or
nibble) j of every 32-bit lane, as F32x16. Nibbles go through a 16-entry table of the values they stand for
(`nibble_table`), looked up by the target's permute:

  target            nibble lookup
  AVX-512           vpermps zmm
  AVX2, AVX-VNNI    vpermps ymm x 4 and a blend
  anything else     extract / insert
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .cpu_target import TARGET
from .simd_types import _F32, _I32, _V16F32, _V16I32, F32x16, I32x16, _function, _halves, _joined, _splat, _splat_i32

PERMUTE_512, PERMUTE_256 = TARGET.has("avx512f"), TARGET.has("avx2")


@intrinsic
def byte_planes_as_f32(typingctx, value):
    """Four F32x16: plane j lane i = signed byte j of 32-bit lane i (an int8 4-vector per lane -> 4 float planes)."""
    if value != I32x16:
        return None

    def codegen(context, builder, signature, args):
        planes = [builder.sitofp(builder.ashr(builder.shl(args[0], _splat_i32(24 - 8 * j)), _splat_i32(24)), _V16F32)
                  for j in range(4)]
        return context.make_tuple(builder, signature.return_type, planes)

    return types.UniTuple(F32x16, 4)(value), codegen


@intrinsic
def nibble_planes_as_f32(typingctx, value, table):
    """Eight F32x16: plane s lane i = table[nibble s of 32-bit lane i] (nibble 0 the lowest; table an F32x16 of
    the 16 values a nibble stands for). A table lookup (vpermps) widens and converts at once."""
    if not (value == I32x16 and table == F32x16):
        return None

    def codegen(context, builder, signature, args):
        planes = []
        for s in range(8):
            index = builder.lshr(args[0], _splat_i32(4 * s)) if s else args[0]
            planes.append(_permute(builder, args[1], index))
        return context.make_tuple(builder, signature.return_type, planes)

    return types.UniTuple(F32x16, 8)(value, table), codegen


def _permute(builder, table, index):
    """table[index & 15] lane by lane: one vpermps zmm; on AVX2 two vpermps ymm (table halves) and a blend a
    half; elsewhere element by element."""
    if PERMUTE_512:
        fn = _function(builder, "llvm.x86.avx512.permvar.sf.512", _V16F32, [_V16F32, _V16I32])
        return builder.call(fn, [table, index])
    masked = builder.and_(index, _splat_i32(15))
    if PERMUTE_256:
        v8f, v8i = ir.VectorType(_F32, 8), ir.VectorType(_I32, 8)
        fn = _function(builder, "llvm.x86.avx2.permps", v8f, [v8f, v8i])
        low_table, high_table = _halves(builder, table, _F32, 8)
        parts = []
        for half in _halves(builder, masked, _I32, 8):
            upper = builder.icmp_signed(">", half, ir.Constant(v8i, [7] * 8))
            parts.append(builder.select(upper, builder.call(fn, [high_table, half]),
                                        builder.call(fn, [low_table, half])))
        return _joined(builder, *parts)
    result = ir.Constant(_V16F32, None)
    for lane in range(16):
        position = ir.Constant(_I32, lane)
        picked = builder.extract_element(table, builder.extract_element(masked, position))
        result = builder.insert_element(result, picked, position)
    return result


@intrinsic
def nibble_table(typingctx, bias):
    """F32x16 whose lane i is i - bias (the values of a 4-bit quant: bias 8 for Q4_0, 0 for Q4_1)."""
    if not isinstance(bias, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        offset = builder.sitofp(context.cast(builder, args[0], signature.args[0], types.int32), _F32)
        return builder.fsub(ir.Constant(_V16F32, [float(i) for i in range(16)]), _splat(builder, offset, _V16F32))

    return F32x16(bias), codegen
