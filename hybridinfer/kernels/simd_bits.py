"""Vector operations for the Q5 formats and the K-quants (the packed layout of `packed.py`), on `simd_types`' vectors:
5- and 6-bit quants from a group of nibbles and the tile's groups of higher bits, the per-super-block factors of a K
tile, a constant. Plain LLVM IR: shifts, masks, ors and a shuffle, on any x86 target."""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .simd_memory import _masked_loader
from .simd_types import _BYTES, _F32, _I8, _I32, _V16I32, F32x16, I32x16, _element_pointer, _is_1d, _splat, _splat_i32


@intrinsic
def five_bit_quants(typingctx, packed, fifth, group):
    """(low, high) I32x16 of bytes 0..31 for nibble group `group` (0..3): byte k of `low` is the low nibble of
    packed's byte k plus 16 times bit `group` of fifth's byte k, byte k of `high` its high nibble plus 16 times bit
    4 + group. `fifth` is the tile's group of fifth bits (or four rows' of them, interleaved as `packed` is)."""
    if not (packed == I32x16 and fifth == I32x16 and isinstance(group, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        g = _splat(builder, context.cast(builder, args[2], signature.args[2], types.int32), _V16I32)
        nibbles, fifth_bits = _splat_i32(0x0F0F0F0F), _splat_i32(0x10101010)
        four = _splat_i32(4)
        low = builder.or_(builder.and_(args[0], nibbles),
                          builder.and_(builder.shl(args[1], builder.sub(four, g)), fifth_bits))
        high = builder.or_(builder.and_(builder.lshr(args[0], four), nibbles),
                           builder.and_(builder.lshr(args[1], g), fifth_bits))
        return context.make_tuple(builder, signature.return_type, [low, high])

    return types.UniTuple(I32x16, 2)(packed, fifth, group), codegen


@intrinsic
def six_bit_quants(typingctx, packed, fifth, sixth, group):
    """`five_bit_quants` completed by the tile's group of sixth bits, laid out as the fifth's: bytes of 0..63."""
    if not (packed == I32x16 and fifth == I32x16 and sixth == I32x16 and isinstance(group, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        g = _splat(builder, context.cast(builder, args[3], signature.args[3], types.int32), _V16I32)
        nibbles, fifth_bits, sixth_bits = _splat_i32(0x0F0F0F0F), _splat_i32(0x10101010), _splat_i32(0x20202020)
        four, five, one = _splat_i32(4), _splat_i32(5), _splat_i32(1)
        low = builder.or_(builder.and_(args[0], nibbles),
                          builder.or_(builder.and_(builder.shl(args[1], builder.sub(four, g)), fifth_bits),
                                      builder.and_(builder.shl(args[2], builder.sub(five, g)), sixth_bits)))
        high = builder.or_(builder.and_(builder.lshr(args[0], four), nibbles),
                           builder.or_(builder.and_(builder.lshr(args[1], g), fifth_bits),
                                       builder.and_(builder.shl(builder.lshr(args[2], g), one), sixth_bits)))
        return context.make_tuple(builder, signature.return_type, [low, high])

    return types.UniTuple(I32x16, 2)(packed, fifth, sixth, group), codegen


@intrinsic
def super_block_factors(typingctx, array, offset):
    """F32x16 of the two float32 stored at array[offset:offset + 8] (a uint8 array): lanes 0..7 the first (the
    blocks of a K tile's first super-block), lanes 8..15 the second."""
    if not (_is_1d(array, _BYTES) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        pair_type = ir.VectorType(_F32, 2)
        pair = builder.load(builder.bitcast(pointer, ir.PointerType(pair_type)), align=4)
        lanes = ir.Constant(ir.VectorType(_I32, 16), [0] * 8 + [1] * 8)
        return builder.shuffle_vector(pair, ir.Constant(pair_type, ir.Undefined), lanes)

    return F32x16(array, offset), codegen


@intrinsic
def splat_bytes(typingctx, word):
    """I32x16 with every 32-bit lane `word` (a constant of four bytes, for `simd_dot.dot_u8s8`)."""
    if not isinstance(word, types.IntegerLiteral):
        return None
    value = word.literal_value

    def codegen(context, builder, signature, args):
        return _splat_i32(value)

    return I32x16(word), codegen


load_s8_as_i32 = _masked_loader(
    _BYTES, ir.VectorType(_I8, 16), "v16i8", I32x16, lambda b, v: b.sext(v, _V16I32),
    "I32x16 from `count` (<= 16) int8 bytes at array[offset:] (later lanes 0): a K tile's codes.")


@intrinsic
def mul_i32(typingctx, a, b):
    """Lane-wise product of two I32x16 (low 32 bits; the K kernels' products stay far below 2**31)."""
    if not (a == I32x16 and b == I32x16):
        return None

    def codegen(context, builder, signature, args):
        return builder.mul(args[0], args[1])

    return I32x16(a, b), codegen
