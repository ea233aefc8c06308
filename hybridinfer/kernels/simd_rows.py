"""Vector operations on `simd_types`' vectors for `cpu_accumulate_int8.py`: four rows' bytes interleaved lane by lane,
per-block values spread to match them, and int8 quantization of coefficients with numpy's exact roundings."""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .simd_types import _I32, _V16F32, _V16I32, F32x16, I32x16, _element_pointer, _function, _is_1d, _splat_i32


def _unpack(builder, x, y, lanes, element_bits, high):
    """vpunpck{l,h}: within each 128-bit lane, the low (or high) halves of x and y interleaved element by element."""
    vector_type = ir.VectorType(ir.IntType(element_bits), lanes)
    per_lane = 128 // element_bits
    half = per_lane // 2
    order = []
    for lane in range(lanes // per_lane):
        for i in range(half):
            source = lane * per_lane + i + half * high
            order += [source, lanes + source]
    return builder.shuffle_vector(builder.bitcast(x, vector_type), builder.bitcast(y, vector_type),
                                  ir.Constant(ir.VectorType(_I32, lanes), order))


@intrinsic
def interleave4(typingctx, a, b, c, d):
    """Four I32x16 from four (rows') I32x16 of bytes: lane l of result m holds byte l % 4 of lane 4 * (l // 4) + m
    of a, b, c and d, in that order (a 4x4 byte transpose: vpunpck{l,h}bw then vpunpck{l,h}wd). With 16 blocks a
    64-byte group, lane l of result m belongs to block 4 * (l // 4) + m, byte l % 4, and its 4 bytes to 4 rows."""
    if not all(arg == I32x16 for arg in (a, b, c, d)):
        return None

    def codegen(context, builder, signature, args):
        ab = [_unpack(builder, args[0], args[1], 64, 8, high) for high in (0, 1)]
        cd = [_unpack(builder, args[2], args[3], 64, 8, high) for high in (0, 1)]
        parts = [builder.bitcast(_unpack(builder, ab[i], cd[i], 32, 16, high), _V16I32)
                 for i in (0, 1) for high in (0, 1)]
        return context.make_tuple(builder, signature.return_type, parts)

    return types.UniTuple(I32x16, 4)(a, b, c, d), codegen


@intrinsic
def block_lanes(typingctx, value):
    """Four vectors of value's type (F32x16 or I32x16): result m lane l = value[4 * (l // 4) + m], a per-block
    value (lane b = block b) laid out as `interleave4`'s result m."""
    if value not in (F32x16, I32x16):
        return None

    def codegen(context, builder, signature, args):
        parts = []
        for m in range(4):
            order = ir.Constant(ir.VectorType(_I32, 16), [4 * (lane // 4) + m for lane in range(16)])
            parts.append(builder.shuffle_vector(args[0], args[0], order))
        return context.make_tuple(builder, signature.return_type, parts)

    return types.UniTuple(value, 4)(value), codegen


@intrinsic
def pack_bytes4(typingctx, a, b, c, d):
    """I32x16 whose lane l holds the low bytes of a[l], b[l], c[l], d[l] as its bytes 0, 1, 2, 3."""
    if not all(arg == I32x16 for arg in (a, b, c, d)):
        return None

    def codegen(context, builder, signature, args):
        total = builder.and_(args[0], _splat_i32(0xFF))
        for shift, arg in ((8, args[1]), (16, args[2])):
            total = builder.or_(total, builder.shl(builder.and_(arg, _splat_i32(0xFF)), _splat_i32(shift)))
        return builder.or_(total, builder.shl(args[3], _splat_i32(24)))

    return I32x16(a, b, c, d), codegen


@intrinsic
def abs_max(typingctx, a, b):
    """max(a, |b|) lane by lane (a >= 0)."""
    if not (a == F32x16 and b == F32x16):
        return None

    def codegen(context, builder, signature, args):
        fabs = _function(builder, "llvm.fabs.v16f32", _V16F32, [_V16F32])
        maxnum = _function(builder, "llvm.maxnum.v16f32", _V16F32, [_V16F32, _V16F32])
        return builder.call(maxnum, [args[0], builder.call(fabs, [args[1]])])

    return F32x16(a, b), codegen


@intrinsic
def int8_scales(typingctx, amax):
    """(scale, inverse): scale = amax / 127 and inverse = 1 / scale (0 where scale is 0), each one correctly
    rounded float32 division whatever the caller's fastmath flags, as numpy computes them."""
    if amax != F32x16:
        return None

    def codegen(context, builder, signature, args):
        scale = builder.fdiv(args[0], ir.Constant(_V16F32, [127.0] * 16))
        inverse = builder.fdiv(ir.Constant(_V16F32, [1.0] * 16), scale)
        positive = builder.fcmp_ordered(">", scale, ir.Constant(_V16F32, None))
        return context.make_tuple(builder, signature.return_type,
                                  [scale, builder.select(positive, inverse, ir.Constant(_V16F32, None))])

    return types.UniTuple(F32x16, 2)(amax), codegen


@intrinsic
def round_i32(typingctx, value):
    """F32x16 lanes rounded to the nearest integer (ties to even, as np.rint) as I32x16."""
    if value != F32x16:
        return None

    def codegen(context, builder, signature, args):
        rint = _function(builder, "llvm.rint.v16f32", _V16F32, [_V16F32])
        return builder.fptosi(builder.call(rint, [args[0]]), _V16I32)

    return I32x16(value), codegen


@intrinsic
def store_i32(typingctx, array, offset, value):
    """array[offset : offset+16] = value (an int32 array)."""
    if not (_is_1d(array, (types.int32,)) and value == I32x16):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        builder.store(args[2], builder.bitcast(pointer, ir.PointerType(_V16I32)), align=4)
        return context.get_dummy_value()

    return types.none(array, offset, value), codegen
