"""512-bit vector values for numba kernels: two vector types and the few operations the quantized kernels need.

numba auto-vectorizes plain loops well (float rows, f16/bf16 rows) but not GGUF block formats: a 32-element
block with its own scale ends up as scalar code or gathers. These intrinsics let a kernel say exactly what to
do with 64 bytes at a time, and LLVM turns each into one or two instructions:

  F32x16  <16 x float>   I32x16  <16 x i32> (also 64 raw bytes)

Loads take a 1-D array, an element offset and a count of valid elements; lanes past the count read as zero
(a masked load, so reading past the end of a row or array never faults; with a constant full count LLVM folds
it into a plain load). Everything is plain LLVM IR, which LLVM splits into halves on a 256-bit target, except the
int8 dot products and the nibble lookup, chosen for the target the kernels are compiled for (`cpu_target.py`):

  target            dot_u8s8 / dot_s8s8                             nibble lookup
  AVX-512 VNNI      vpdpbusd zmm (signed: (w + 128) . x, less 128 sum x) vpermps zmm
  AVX-512           vpmaddubsw + vpmaddwd zmm (signed: |w| . sign(x, w))  vpermps zmm
  AVX-VNNI          vpdpbusd ymm x 2 (signed as for VNNI)               vpermps ymm x 4 and a blend
  AVX2              vpmaddubsw + vpmaddwd ymm x 2 (signed as AVX-512)    vpermps ymm x 4 and a blend
  anything else     widened multiplies and adds (generic IR)            extract / insert
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

from .cpu_target import TARGET

VNNI_512 = TARGET.has("avx512f", "avx512bw", "avx512vnni")
VNNI_256 = not VNNI_512 and TARGET.has("avx2", "avxvnni")
MADD_512 = not VNNI_512 and TARGET.has("avx512f", "avx512bw")
MADD_256 = not (VNNI_512 or VNNI_256 or MADD_512) and TARGET.has("avx2")
PERMUTE_512, PERMUTE_256 = TARGET.has("avx512f"), TARGET.has("avx2")
NATIVE_HALF = TARGET.has("f16c") or TARGET.has("neon")  # half -> float in hardware (vcvtph2ps, fcvtl)
BYTE_MASKS = TARGET.has("avx512bw")  # masked loads of 8- and 16-bit lanes in one instruction
SIGNED_DOT_BY_BIAS = VNNI_512 or VNNI_256  # dot_s8s8 runs as (w + 128) . x: a sum starts at -128 sum(x)

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
            by_lanes = _masked_load(builder, pointer, vector_type, _lane_mask(builder, count, vector_type.count), suffix)
            lanes_block = builder.basic_block
    loaded = builder.phi(vector_type)
    loaded.add_incoming(by_words, words_block)
    loaded.add_incoming(by_lanes, lanes_block)
    return loaded


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


# ---- loads and stores (lanes past `count` read as zero; nothing past it is touched) ----------------------

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
            return convert(builder, _masked_load(builder, pointer, loaded_type, _lane_mask(builder, count,
                                                                                             loaded_type.count), suffix))

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


# ---- float lanes ---------------------------------------------------------------------------------------

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


# ---- integer lanes and bytes -----------------------------------------------------------------------------

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


# ---- scalars ------------------------------------------------------------------------------------------

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
