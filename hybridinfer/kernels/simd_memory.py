"""Vector memory access for numba kernels: masked loads into `simd_types`' F32x16 / I32x16 (bytes, float32, int32,
IEEE half floats, int8 widened to float), a masked store of float32 lanes, and cache-line prefetches.

Loads take a 1-D array, an element offset and a count of valid elements; lanes past the count read as zero
(a masked load, so reading past the end of a row or array never faults; with a constant full count LLVM folds
it into a plain load). Stores touch nothing past the count. Where the target masks only 32-bit lanes (AVX2's
vpmaskmovd), loads of 8- and 16-bit lanes go by whole words.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .cpu_target import TARGET
from .simd_half import _half_to_float
from .simd_types import (_BYTES, _I8, _I32, _I64, _PTR, _V16F32, _V16I16, _V16I32, _V64I8, F32x16, I32x16, _as_i64,
                         _element_pointer, _function, _is_1d, _lane_mask)

BYTE_MASKS = TARGET.has("avx512bw")  # masked loads of 8- and 16-bit lanes in one instruction


def _masked_load(builder, pointer, vector_type, mask, suffix):
    fn = _function(builder, f"llvm.masked.load.{suffix}.p0", vector_type, [_PTR, _I32, mask.type, vector_type])
    return builder.call(fn, [pointer, ir.Constant(_I32, 1), mask, ir.Constant(vector_type, None)])


def _masked_load_by_words(builder, pointer, vector_type, suffix, count):
    """A masked load of 8- or 16-bit lanes where the target masks only 32-bit lanes (AVX2's vpmaskmovd; a byte mask
    would become one branch and insert per byte): when `count` lanes are whole words, a word-masked load, else
    (rare: an odd tail) the byte-masked one."""
    per_word = 32 // vector_type.element.width
    word_type = ir.VectorType(_I32, vector_type.count // per_word)
    whole = builder.icmp_signed("==", builder.and_(count, ir.Constant(_I64, per_word - 1)), ir.Constant(_I64, 0))
    with builder.if_else(whole, likely=True) as (in_words, otherwise):
        with in_words:
            words = builder.ashr(count, ir.Constant(_I64, per_word.bit_length() - 1))
            by_words = builder.bitcast(_masked_load(builder, pointer, word_type, _lane_mask(
                builder, words, word_type.count), f"v{word_type.count}i32"), vector_type)
            words_block = builder.basic_block
        with otherwise:
            by_lanes = _masked_load(builder, pointer, vector_type, _lane_mask(builder, count, vector_type.count),
                                    suffix)
            lanes_block = builder.basic_block
    loaded = builder.phi(vector_type)
    loaded.add_incoming(by_words, words_block)
    loaded.add_incoming(by_lanes, lanes_block)
    return loaded


def _masked_loader(dtypes, loaded_type, suffix, result, convert, doc):
    """An intrinsic (array, offset, count) -> `result`: a masked load of `loaded_type` (lanes past count zero)
    at array[offset] (1-D, of one of `dtypes`), then `convert(builder, value)`."""
    @intrinsic
    def load(typingctx, array, offset, count):
        if not _is_1d(array, dtypes):
            return None

        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
            count = _as_i64(context, builder, args[2], signature.args[2])
            if isinstance(loaded_type.element, ir.IntType) and loaded_type.element.width < 32 and not BYTE_MASKS:
                return convert(builder, _masked_load_by_words(builder, pointer, loaded_type, suffix, count))
            mask = _lane_mask(builder, count, loaded_type.count)
            return convert(builder, _masked_load(builder, pointer, loaded_type, mask, suffix))

        return result(array, offset, count), codegen

    load.__doc__ = doc
    return load


load_bytes = _masked_loader(_BYTES, _V64I8, "v64i8", I32x16, lambda b, v: b.bitcast(v, _V16I32),
                            "I32x16 holding array[offset : offset+count] (uint8/int8, count <= 64; later bytes zero).")
load_f32 = _masked_loader((types.float32,), _V16F32, "v16f32", F32x16, lambda b, v: v,
                          "F32x16 from float32 array[offset : offset+count] (count <= 16; later lanes 0).")
load_i32 = _masked_loader((types.int32,), _V16I32, "v16i32", I32x16, lambda b, v: v,
                          "I32x16 from int32 array[offset : offset+count] (count <= 16; later lanes 0).")
load_f16_bytes = _masked_loader(
    _BYTES, _V16I16, "v16i16", F32x16, _half_to_float,
    "F32x16 from `count` (<= 16) IEEE half floats stored little-endian at array[offset:] (a uint8 array).")
load_s8_as_f32 = _masked_loader(
    _BYTES, ir.VectorType(_I8, 16), "v16i8", F32x16, lambda b, v: b.sitofp(b.sext(v, _V16I32), _V16F32),
    "F32x16 from `count` (<= 16) int8 bytes at array[offset:] (later lanes 0).")


@intrinsic
def store_f32(typingctx, array, offset, value, count):
    """array[offset : offset+count] = the first `count` (<= 16) lanes of `value` (float32 array)."""
    if not (_is_1d(array, (types.float32,)) and value == F32x16):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        mask = _lane_mask(builder, _as_i64(context, builder, args[3], signature.args[3]), 16)
        fn = _function(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(), [_V16F32, _PTR, _I32, mask.type])
        builder.call(fn, [args[2], pointer, ir.Constant(_I32, 1), mask])
        return context.get_dummy_value()

    return types.none(array, offset, value, count), codegen


def _prefetch(locality, doc):
    @intrinsic
    def prefetch_line(typingctx, array, offset):
        if not (isinstance(array, types.Array) and array.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
            fn = _function(builder, "llvm.prefetch.p0", ir.VoidType(), [_PTR, _I32, _I32, _I32])
            builder.call(fn, [pointer, ir.Constant(_I32, 0), ir.Constant(_I32, locality), ir.Constant(_I32, 1)])
            return context.get_dummy_value()

        return types.none(array, offset), codegen

    prefetch_line.__doc__ = doc
    return prefetch_line


prefetch = _prefetch(3, "Hint the CPU to fetch the cache line holding array[offset] (1-D, any dtype) into all cache "
                        "levels (prefetcht0).")
prefetch_l2 = _prefetch(2, "As `prefetch`, into L2 and L3 only (prefetcht1): for data needed later than L1 can hold.")
