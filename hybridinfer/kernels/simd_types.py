"""512-bit vector values for numba kernels: the two vector types and the LLVM codegen helpers the `simd_*` modules
build their intrinsics from.

numba auto-vectorizes plain loops well (float rows, f16/bf16 rows) but not GGUF block formats: a 32-element
block with its own scale ends up as scalar code or gathers. The `simd_*` intrinsics let a kernel say exactly what
to do with 64 bytes at a time, and LLVM turns each into one or two instructions:

  F32x16  <16 x float>   I32x16  <16 x i32> (also 64 raw bytes)

Everything is plain LLVM IR, which LLVM splits into halves on a 256-bit target, except the int8 dot products
(`simd_dot`), the nibble lookup (`simd_planes`) and the half-float conversion (`simd_half`), chosen for the target
the kernels are compiled for (`cpu_target.py`).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import models, register_model

_I1, _I8, _I16, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_F16, _F32 = ir.HalfType(), ir.FloatType()
_V64I8, _V16I16, _V16I32, _V16F32 = (ir.VectorType(_I8, 64), ir.VectorType(_I16, 16), ir.VectorType(_I32, 16),
                                     ir.VectorType(_F32, 16))
_V64I32 = ir.VectorType(_I32, 64)
_PTR = ir.PointerType(_I8)


class F32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="F32x16")


class I32x16Type(types.Type):
    def __init__(self):
        super().__init__(name="I32x16")


F32x16 = F32x16Type()
I32x16 = I32x16Type()


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16F32)


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16I32)


# ---- codegen helpers -------------------------------------------------------------------------------------

def _function(builder, name, return_type, arg_types):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(return_type, arg_types), name)


def _as_i64(context, builder, value, value_type):
    return context.cast(builder, value, value_type, types.int64)


def _element_pointer(context, builder, array_type, array, offset, offset_type):
    """i8* to array[offset] (1-D, any dtype)."""
    data = context.make_array(array_type)(context, builder, array).data
    pointer = builder.gep(data, [_as_i64(context, builder, offset, offset_type)], inbounds=True)
    return builder.bitcast(pointer, _PTR)


def _lane_mask(builder, count, lanes):
    """<lanes x i1>: lane i is on iff i < count (count an i64, any value)."""
    int_type = ir.IntType(lanes)
    clamped = builder.select(builder.icmp_signed("<", count, ir.Constant(_I64, 0)), ir.Constant(_I64, 0), count)
    full = builder.icmp_signed(">=", clamped, ir.Constant(_I64, lanes))
    shift = builder.trunc(clamped, int_type) if lanes < 64 else clamped
    partial = builder.sub(builder.shl(ir.Constant(int_type, 1), shift), ir.Constant(int_type, 1))
    bits = builder.select(full, ir.Constant(int_type, (1 << lanes) - 1), partial)
    return builder.bitcast(bits, ir.VectorType(_I1, lanes))


def _splat(builder, value, vector_type):
    undef = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(one, undef, zeros)


def _is_1d(array_type, dtypes):
    return isinstance(array_type, types.Array) and array_type.ndim == 1 and array_type.dtype in dtypes


_BYTES = (types.uint8, types.int8)


def _splat_i32(word):
    return ir.Constant(_V16I32, [word] * 16)


def _halves(builder, vector, element, count):
    """The low and high 256 bits of a 512-bit vector, each as <count x element>."""
    whole = builder.bitcast(vector, ir.VectorType(element, 2 * count))
    return [builder.shuffle_vector(whole, whole, ir.Constant(ir.VectorType(_I32, count),
                                                             list(range(k * count, (k + 1) * count))))
            for k in (0, 1)]


def _joined(builder, low, high):
    """<2n x T> of two <n x T>."""
    n = low.type.count
    return builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n))))
