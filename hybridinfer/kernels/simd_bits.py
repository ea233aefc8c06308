"""A `simd.py` vector operation for the Q5 formats: 5-bit quants from a group of nibbles and the tile's fifth bits
(the packed layout of `packed.py`). Plain LLVM IR: a shift, a mask and an or a half, on any x86 target."""

from __future__ import annotations

from numba.core import types
from numba.extending import intrinsic

from .simd import _V16I32, I32x16, _splat, _splat_i32


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
