"""Byte dot products for numba kernels: per 32-bit lane of `simd_types.I32x16`, the sum of its 4 byte products
added to an int32 accumulator, unsigned x signed (`dot_u8s8`) or signed x signed (`dot_s8s8`), by the
instructions of the target the kernels are compiled for (`cpu_target.py`):

  target            dot_u8s8 / dot_s8s8
  AVX-512 VNNI      vpdpbusd zmm (signed: (w + 128) . x, less 128 sum x)
  AVX-512           vpmaddubsw + vpmaddwd zmm (signed: |w| . sign(x, w))
  AVX-VNNI          vpdpbusd ymm x 2 (signed as for VNNI)
  AVX2              vpmaddubsw + vpmaddwd ymm x 2 (signed as AVX-512)
  anything else     widened multiplies and adds (generic IR)
"""

from __future__ import annotations

from llvmlite import ir
from numba.extending import intrinsic

from .cpu_target import TARGET
from .simd_types import (_I8, _I16, _I32, _V16I32, _V64I8, _V64I32, I32x16, _function, _halves, _joined,
                         _splat_i32)

VNNI_512 = TARGET.has("avx512f", "avx512bw", "avx512vnni")
VNNI_256 = not VNNI_512 and TARGET.has("avx2", "avxvnni")
MADD_512 = not VNNI_512 and TARGET.has("avx512f", "avx512bw")
MADD_256 = not (VNNI_512 or VNNI_256 or MADD_512) and TARGET.has("avx2")
SIGNED_DOT_BY_BIAS = VNNI_512 or VNNI_256  # dot_s8s8 runs as (w + 128) . x: a sum starts at -128 sum(x)


def _vpdpbusd(builder, acc, unsigned_bytes, signed_bytes):
    """acc + the u8 x s8 dot of each 32-bit lane's 4 bytes (AVX-512 VNNI, or AVX-VNNI on two halves)."""
    if VNNI_512:
        fn = _function(builder, "llvm.x86.avx512.vpdpbusd.512", _V16I32, [_V16I32] * 3)
        return builder.call(fn, [acc, unsigned_bytes, signed_bytes])
    v8 = ir.VectorType(_I32, 8)
    fn = _function(builder, "llvm.x86.avx512.vpdpbusd.256", v8, [v8] * 3)
    parts = [builder.call(fn, list(args)) for args in zip(*(_halves(builder, v, _I32, 8)
                                                              for v in (acc, unsigned_bytes, signed_bytes)))]
    return _joined(builder, *parts)


def _maddubs(builder, acc, unsigned_bytes, signed_bytes):
    """acc + per 32-bit lane the sum of its 4 byte products, by vpmaddubsw (pairs to int16, which saturates: each
    pair's sum must fit) and vpmaddwd with ones (int16 pairs to int32); 512-bit, or two 256-bit halves."""
    if MADD_512:
        pairs_fn = _function(builder, "llvm.x86.avx512.pmaddubs.w.512", ir.VectorType(_I16, 32),
                             [_V64I8, _V64I8])
        sums_fn = _function(builder, "llvm.x86.avx512.pmaddw.d.512", _V16I32, [ir.VectorType(_I16, 32)] * 2)
        pairs = builder.call(pairs_fn, [builder.bitcast(unsigned_bytes, _V64I8), builder.bitcast(signed_bytes, _V64I8)])
        return builder.add(acc, builder.call(sums_fn, [pairs, ir.Constant(ir.VectorType(_I16, 32), [1] * 32)]))
    v32i8, v16i16, v8i32 = ir.VectorType(_I8, 32), ir.VectorType(_I16, 16), ir.VectorType(_I32, 8)
    pairs_fn = _function(builder, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
    sums_fn = _function(builder, "llvm.x86.avx2.pmadd.wd", v8i32, [v16i16, v16i16])
    parts = [builder.call(sums_fn, [builder.call(pairs_fn, [u, x]), ir.Constant(v16i16, [1] * 16)])
             for u, x in zip(_halves(builder, unsigned_bytes, _I8, 32), _halves(builder, signed_bytes, _I8, 32))]
    return builder.add(acc, _joined(builder, *parts))


def _generic_dot(builder, acc, a, b, a_signed):
    """acc + per 32-bit lane the sum of its 4 byte products, in plain IR (widened to int32: exact)."""
    a = (builder.sext if a_signed else builder.zext)(builder.bitcast(a, _V64I8), _V64I32)
    products = builder.mul(a, builder.sext(builder.bitcast(b, _V64I8), _V64I32))
    total = acc
    for j in range(4):
        total = builder.add(total, builder.shuffle_vector(
            products, products, ir.Constant(ir.VectorType(_I32, 16), [4 * i + j for i in range(16)])))
    return total


@intrinsic
def dot_u8s8(typingctx, acc, unsigned_bytes, signed_bytes):
    """acc lane i + sum over its 4 bytes j of uint8(a[4i+j]) * int8(b[4i+j]), exact in int32, for unsigned bytes
    of at most 127 (nibbles): vpmaddubsw's int16 pairs then never saturate."""
    if not (acc == I32x16 and unsigned_bytes == I32x16 and signed_bytes == I32x16):
        return None

    def codegen(context, builder, signature, args):
        if VNNI_512 or VNNI_256:
            return _vpdpbusd(builder, *args)
        if MADD_512 or MADD_256:
            return _maddubs(builder, *args)
        return _generic_dot(builder, *args, a_signed=False)

    return I32x16(acc, unsigned_bytes, signed_bytes), codegen


@intrinsic
def signed_dot_start(typingctx, block_sums):
    """The I32x16 a chain of `dot_s8s8` starts from, given each lane's sum of the signed operand `x` over the
    chain (the block sums of int8 activations): -128 * block_sums where dot_s8s8 computes (w + 128) . x
    (`SIGNED_DOT_BY_BIAS`), zeros elsewhere."""
    if block_sums != I32x16:
        return None

    def codegen(context, builder, signature, args):
        if SIGNED_DOT_BY_BIAS:
            return builder.mul(args[0], _splat_i32(-128))
        return ir.Constant(_V16I32, None)

    return I32x16(block_sums), codegen


@intrinsic
def dot_s8s8(typingctx, acc, weight_bytes, signed_bytes):
    """acc lane i + sum over its 4 bytes j of int8(w[4i+j]) * int8(x[4i+j]) (x in -127..127, as int8 activations
    are), exact once the sums over a block include one `signed_dot_start` of the block's sums of x. VNNI:
    vpdpbusd of w + 128 (the start takes the extra 128 sum(x) off); vpmaddubsw targets: |w| . (x with w's sign),
    as llama.cpp's AVX2 code does."""
    if not (acc == I32x16 and weight_bytes == I32x16 and signed_bytes == I32x16):
        return None

    def codegen(context, builder, signature, args):
        acc_value, w, x = args
        if SIGNED_DOT_BY_BIAS:
            return _vpdpbusd(builder, acc_value, builder.xor(w, _splat_i32(0x80808080 - (1 << 32))), x)
        if MADD_512 or MADD_256:
            w8, x8 = builder.bitcast(w, _V64I8), builder.bitcast(x, _V64I8)
            zero = ir.Constant(_V64I8, None)
            negative = builder.icmp_signed("<", w8, zero)
            magnitude = builder.select(negative, builder.sub(zero, w8), w8)  # |-128| = 0x80 read as unsigned 128
            signed = builder.select(negative, builder.sub(zero, x8), x8)
            return _maddubs(builder, acc_value, builder.bitcast(magnitude, _V16I32), builder.bitcast(signed, _V16I32))
        return _generic_dot(builder, acc_value, w, x, a_signed=True)

    return I32x16(acc, weight_bytes, signed_bytes), codegen
