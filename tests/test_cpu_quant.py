"""The packed-weight CPU kernels (`cpu_quant.py`) against their numpy twins (`reference.py`), every kernel x every
format, on fresh random weights quantized by the gguf package."""

import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.errors import HybridInferError
from hybridinfer.kernels import cpu_quant, reference
from hybridinfer.kernels.formats import FORMAT_CODE
from hybridinfer.kernels.packed import byte_element_order, lane_element_order, pack, packed_nbytes
from hybridinfer.kernels.packed_k import pack_k_rows, pack_k_rows_reference, unpack_k_rows
from hybridinfer.model_file.gguf_file import GGUFTensor
from hybridinfer.model_file.weight_formats import CPU_NATIVE_FORMATS, CPU_NATIVE_TYPES, FORMATS
from kquant_blocks import random_k_raw

QUANTIZED = [f.type for f in CPU_NATIVE_FORMATS if f.quantized]
ACCUMULATED = [f.type for f in CPU_NATIVE_FORMATS if not f.k_quant]  # S3's formats (K-quants' transposes are not K)
K_QUANTS = [f.type for f in CPU_NATIVE_FORMATS if f.k_quant]
# Every tolerance in one place. Float32 accumulation against the twin's float64, on the same decoded weights, for
# every format: |kernel - twin| <= tolerance * magnitude, per output, where magnitude is the twin applied to |weights|
# and |x| (the sum of the absolute terms, which sets the size of rounding errors however much the terms cancel).
EXACT_TOLERANCE = 1e-5
# The int8-activation path against the exact product: |out - W x| <= cpu_quant.int8_error_bound(code) * ||W_row|| *
# ||x|| (a bound, documented in cpu_quant), plus the float tolerance.
# (rows, cols): odd row counts, one block, cols not a multiple of 256 nor of a 16-block tile, whole tiles
SHAPES = [(7, 96), (33, 4384), (1, 32), (16, 512), (3, 1056)]
FLOAT_ONLY_SHAPES = [(9, 100), (2, 7)]  # float formats need no 32-element blocks
# K-quants: rows of whole 256-element super-blocks; one super-block (half a tile), a tile and a half, 8.5 tiles
K_SHAPES = [(7, 256), (1, 256), (16, 512), (3, 768), (33, 4352)]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # the same every run


def random_raw(rng, qtype, shape):
    """A random normal matrix quantized to qtype, as gguf stores it (a K-quant: random valid blocks)."""
    if qtype in K_QUANTS:
        return random_k_raw(rng, qtype, shape)
    values = rng.standard_normal(shape, dtype=np.float32) * rng.uniform(0.01, 2.0)
    return values if qtype == T.F32 else quants.quantize(values, qtype)


def random_weight(rng, qtype, shape, raw=None):
    """(packed, float32 values as gguf decodes them, their sizes) for `raw` (default: a fresh `random_raw`)."""
    raw = random_raw(rng, qtype, shape) if raw is None else raw
    return pack((raw, qtype, shape)), reference.dequantized(raw, qtype, shape), weight_sizes(raw, qtype, shape)


def weight_sizes(raw, qtype, shape):
    """|w|, except |d| q + |m| where blocks have a minimum (value d q + m; Q4_K/Q5_K: |d| sc q + |dmin| m): the size
    of what a kernel adds up for each weight."""
    fmt = FORMATS[qtype]
    if qtype in (T.Q4_K, T.Q5_K):  # value d sc q - dmin m: d made positive, dmin negative
        blocks = raw.reshape(-1, fmt.block_bytes).copy()
        blocks[:, 1] &= 0x7F
        blocks[:, 3] |= 0x80
        return reference.dequantized(blocks.reshape(raw.shape), qtype, shape)
    if not fmt.has_minimum:
        return np.abs(reference.dequantized(raw, qtype, shape))
    blocks = raw.reshape(-1, fmt.block_bytes).copy()
    for field in fmt.fields:  # clear the sign bits of the little-endian f16 d and m
        blocks[:, fmt.field_at(field) + 1] &= 0x7F
    return reference.dequantized(blocks.reshape(raw.shape), qtype, shape)


def assert_close(actual, expected, magnitude, tolerance):
    """|actual - expected| <= tolerance * magnitude, output by output."""
    assert actual.shape == expected.shape
    assert np.all(np.abs(actual - expected) <= tolerance * magnitude)


def all_shapes(qtype):
    if qtype in K_QUANTS:
        return K_SHAPES
    return SHAPES + (FLOAT_ONLY_SHAPES if qtype not in QUANTIZED else [])


def random_rows(rng, n, fraction):
    """A random subset (unsorted, possibly empty) of range(n) as int64."""
    return rng.choice(n, int(round(fraction * n)), replace=False).astype(np.int64)


@pytest.mark.parametrize("qtype", CPU_NATIVE_TYPES, ids=lambda t: t.name)
def test_pack_round_trips_to_the_gguf_values(rng, qtype):
    for shape in all_shapes(qtype):
        raw = random_raw(rng, qtype, shape)
        packed = pack((raw, qtype, shape))
        rows = rng.permutation(shape[0])
        assert np.array_equal(packed.dequantize_rows(rows), reference.dequantized(raw, qtype, shape)[rows])
        assert packed.nbytes == raw.nbytes  # a permutation: the same bytes as the file


@pytest.mark.parametrize("float_activations", [True, False], ids=["float", "int8"])
@pytest.mark.parametrize("qtype", CPU_NATIVE_TYPES, ids=lambda t: t.name)
def test_matvec(rng, qtype, float_activations):
    for shape in all_shapes(qtype):
        packed, values, sizes = random_weight(rng, qtype, shape)
        x = rng.standard_normal(shape[1], dtype=np.float32)
        out = np.full(shape[0], np.nan, dtype=np.float32)
        cpu_quant.matvec(packed, x, out, float_activations=float_activations)
        check_against_twins(out, values, sizes, x, qtype, float_activations, lambda w, v: reference.matvec(w, v))


@pytest.mark.parametrize("float_activations", [True, False], ids=["float", "int8"])
@pytest.mark.parametrize("qtype", CPU_NATIVE_TYPES, ids=lambda t: t.name)
def test_matvec_rows(rng, qtype, float_activations):
    for shape in all_shapes(qtype):
        packed, values, sizes = random_weight(rng, qtype, shape)
        x = rng.standard_normal(shape[1], dtype=np.float32)
        for fraction in (0.0, 0.3, 1.0):
            rows = random_rows(rng, shape[0], fraction)
            for index in (rows, rows.astype(np.int32)):
                out = np.full(rows.shape[0], np.nan, dtype=np.float32)
                cpu_quant.matvec_rows(packed, x, index, out, float_activations=float_activations)
                check_against_twins(out, values, sizes, x, qtype, float_activations,
                                    lambda w, v: reference.matvec_rows(w, v, rows))


@pytest.mark.parametrize("float_activations", [True, False], ids=["float", "int8"])
@pytest.mark.parametrize("qtype", CPU_NATIVE_TYPES, ids=lambda t: t.name)
def test_matmul_rows(rng, qtype, float_activations):
    """Gathered rows for several tokens: each token's result is the one-token product's, bit for bit."""
    for shape in all_shapes(qtype):
        packed, values, sizes = random_weight(rng, qtype, shape)
        x = rng.standard_normal((5, shape[1]), dtype=np.float32)
        rows = random_rows(rng, shape[0], 0.3)
        out = np.full((5, rows.shape[0]), np.nan, dtype=np.float32)
        cpu_quant.matmul_rows(packed, x, rows, out, float_activations=float_activations)
        check_against_twins(out, values, sizes, x, qtype, float_activations,
                            lambda w, v: reference.matmul(w[rows], v))
        one = np.empty(rows.shape[0], np.float32)
        cpu_quant.matvec_rows(packed, x[3], rows, one, float_activations=float_activations)
        np.testing.assert_array_equal(out[3], one)


@pytest.mark.parametrize("float_activations", [True, False], ids=["float", "int8"])
@pytest.mark.parametrize("qtype", CPU_NATIVE_TYPES, ids=lambda t: t.name)
def test_matmul(rng, qtype, float_activations):
    for shape in all_shapes(qtype):
        packed, values, sizes = random_weight(rng, qtype, shape)
        for tokens in (1, 5):
            x = rng.standard_normal((tokens, shape[1]), dtype=np.float32)
            out = np.full((tokens, shape[0]), np.nan, dtype=np.float32)
            cpu_quant.matmul(packed, x, out, float_activations=float_activations)
            check_against_twins(out, values, sizes, x, qtype, float_activations, lambda w, v: reference.matmul(w, v))
            for t in range(tokens):  # tokens go two at a time: each one's result is the one-token product's
                one = np.empty(shape[0], np.float32)
                cpu_quant.matvec(packed, x[t], one, float_activations=float_activations)
                np.testing.assert_array_equal(out[t], one)


@pytest.mark.parametrize("float_activations", [True, False], ids=["float", "int8"])
@pytest.mark.parametrize("qtype", ACCUMULATED, ids=lambda t: t.name)
def test_accumulate_rows(rng, qtype, float_activations):
    """Float coefficients (and float formats): against the twin. int8 coefficients: tightly against the twin that
    quantizes them the same way, and near the exact sum."""
    for shape in all_shapes(qtype) + ([(40, 11008), (300, 4096)] if qtype in QUANTIZED else [(40, 1000)]):
        raw = random_raw(rng, qtype, shape)
        packed_t, values_t, sizes_t = random_weight(rng, qtype, shape, raw)
        for fraction in (0.0, 0.2, 1.0):
            rows = random_rows(rng, shape[0], fraction)
            coeffs = rng.standard_normal(rows.shape[0], dtype=np.float32) * rng.exponential(1.0, rows.shape[0])
            coeffs[::3] = 0.0  # zero coefficients are skipped
            out = np.full(shape[1], np.nan, dtype=np.float32)
            cpu_quant.accumulate_rows(packed_t, rows, coeffs, out, float_activations=float_activations)
            expected = reference.accumulate_rows(values_t, rows, coeffs)
            magnitude = reference.accumulate_rows(sizes_t, rows, np.abs(coeffs))
            if float_activations or qtype not in QUANTIZED:
                assert_close(out, expected, magnitude, EXACT_TOLERANCE)
                continue
            assert_close(out, reference.accumulate_rows_int8(raw, qtype, shape, rows, coeffs), magnitude,
                         EXACT_TOLERANCE)
            if np.count_nonzero(coeffs) >= 8:  # int8 coefficients: ~5e-3 relative (RMS) to the exact sum
                assert np.linalg.norm(out - expected) <= 2e-2 * np.linalg.norm(expected)


@pytest.mark.parametrize("qtype", [t for t in ACCUMULATED if t in QUANTIZED], ids=lambda t: t.name)
def test_accumulate_rows_int8_does_not_depend_on_the_thread_count(rng, qtype):
    from hybridinfer.kernels.cpu_accumulate_int8 import int8_accumulate

    shape = (200, 1056)
    raw = quants.quantize(rng.standard_normal(shape, dtype=np.float32), qtype)
    packed_t = pack((raw, qtype, shape))
    rows = random_rows(rng, shape[0], 0.5)
    coeffs = rng.standard_normal(rows.shape[0], dtype=np.float32)
    twin = reference.accumulate_rows_int8(raw, qtype, shape, rows, coeffs)
    magnitude = reference.accumulate_rows(weight_sizes(raw, qtype, shape), rows, np.abs(coeffs))
    for chunks in (1, 2, 3, 7):
        out = np.full(shape[1], np.nan, dtype=np.float32)
        int8_accumulate(FORMAT_CODE[qtype])(packed_t.data, packed_t.n_blocks, rows, coeffs, out, chunks)
        assert_close(out, twin, magnitude, EXACT_TOLERANCE)


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_accumulate_rows_refuses_k_quants(rng, qtype):
    packed_t = pack((random_k_raw(rng, qtype, (4, 256)), qtype, (4, 256)))
    with pytest.raises(ValueError, match=FORMATS[qtype].transpose_type.name):
        cpu_quant.accumulate_rows(packed_t, np.arange(4), np.ones(4, np.float32), np.empty(256, np.float32))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quant_tiles_stay_near_the_file_size(rng, qtype):
    shape = (4, 4096)  # whole tiles: per tile, a 64-byte header for 2 super-blocks' f16 fields and scale bytes
    raw = random_k_raw(rng, qtype, shape)
    packed = pack((raw, qtype, shape))
    assert packed.nbytes == raw.nbytes  # GB/s are counted in the file's bytes
    assert raw.nbytes < packed.data.nbytes <= 1.12 * raw.nbytes
    assert packed_nbytes(GGUFTensor("w", qtype, shape, raw)) == packed.data.nbytes


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
@pytest.mark.parametrize("cols", [256, 512, 768, 4096])  # a short tile alone, whole tiles, both
def test_k_rows_pack_as_their_numpy_twin_packs_them(rng, qtype, cols):
    raw = random_k_raw(rng, qtype, (5, cols))
    packed = pack_k_rows(qtype, raw, cols)
    assert np.array_equal(packed, pack_k_rows_reference(qtype, raw, cols))
    assert np.array_equal(unpack_k_rows(qtype, packed, cols), raw)


def check_against_twins(out, values, sizes, x, qtype, float_activations, twin):
    """Float activations: against the twin. int8 path: tightly against the twin fed the same int8 activations, and
    within the documented bound against the exact product."""
    expected, magnitude = twin(values, x), twin(sizes, np.abs(x))
    if float_activations or qtype not in QUANTIZED:
        assert_close(out, expected, magnitude, EXACT_TOLERANCE)
        return
    code = FORMATS[qtype].code
    assert_close(out, twin(values, reference.quantize_activations(x, cpu_quant.SCALE_GROUPS[code])), magnitude,
                 EXACT_TOLERANCE)
    row_norms = np.sqrt(twin(values ** 2, np.ones_like(x)))  # ||W_row|| in the twin's output layout
    x_norms = np.linalg.norm(x, axis=-1, keepdims=True)
    bound = cpu_quant.int8_error_bound(code)
    assert np.all(np.abs(out - expected) <= bound * row_norms * x_norms + EXACT_TOLERANCE * magnitude)


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_prepared_activations_are_shared_across_matrices(rng, qtype):
    gate, up = random_weight(rng, qtype, (24, 768)), random_weight(rng, qtype, (40, 768))
    x = rng.standard_normal(768, dtype=np.float32)
    prepared = cpu_quant.prepare(x)
    assert np.array_equal(prepared.xp[0], x[lane_element_order(768 // 32)])
    blocks = x.reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    quantized = np.rint(blocks * (np.float32(1) / scale)).ravel()
    assert np.array_equal(prepared.qx[0], quantized[byte_element_order(768 // 32)])
    assert np.array_equal(prepared.dx[0], scale.ravel())
    for packed, values, sizes in (gate, up):
        out = np.empty(packed.rows, dtype=np.float32)
        cpu_quant.matvec(packed, prepared, out)
        assert_close(out, reference.matvec(values, reference.quantize_activations(x)),
                      reference.matvec(sizes, np.abs(x)), EXACT_TOLERANCE)


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quant_activations_take_one_scale_per_256_elements(rng, qtype):
    """As llama.cpp's q8_K: the int8 activations of a K-quant matrix share one scale per super-block."""
    x = rng.standard_normal(768, dtype=np.float32)
    x[300] = 40.0  # an outlier sets its whole super-block's scale, not only its 32-block's
    prepared = cpu_quant.prepare(x, code=FORMATS[qtype].code)
    groups = x.reshape(-1, 256)
    scale = np.abs(groups).max(axis=1, keepdims=True) / np.float32(127)
    quantized = np.rint(groups * (np.float32(1) / scale)).ravel()
    assert np.array_equal(prepared.dx[0], np.repeat(scale.ravel(), 8))
    assert np.array_equal(prepared.qx[0], quantized[byte_element_order(768 // 32)])
    assert np.array_equal(reference.quantize_activations(x, 8), (quantized.reshape(-1, 256) * scale).ravel())


def test_read_only_weights_are_packed_and_read(rng):
    """Weights memory-mapped from a GGUF file are read-only views."""
    for qtype in (T.F16, T.Q4_0):
        values = rng.standard_normal((5, 64), dtype=np.float32)
        raw = quants.quantize(values, qtype)
        raw.setflags(write=False)
        packed = pack((raw, qtype, (5, 64)))
        out = np.empty(5, dtype=np.float32)
        cpu_quant.matvec(packed, np.ones(64, np.float32), out, float_activations=True)
        values = reference.dequantized(raw, qtype, (5, 64))
        assert_close(out, values.sum(axis=1), np.abs(values).sum(axis=1), EXACT_TOLERANCE)


def test_errors_say_what_to_do(rng):
    raw = quants.quantize(rng.standard_normal((2, 256), dtype=np.float32), T.Q8_0)
    with pytest.raises(HybridInferError, match="re-quantize"):
        pack((np.zeros((2, 110), np.uint8), T.Q3_K, (2, 256)))
    with pytest.raises(HybridInferError, match="bytes per row"):
        pack((raw[:, :-2], T.Q8_0, (2, 256)))
    packed = pack((raw, T.Q8_0, (2, 256)))
    with pytest.raises(ValueError, match="columns"):
        cpu_quant.matvec(packed, np.ones(128, np.float32), np.empty(2, np.float32))
    with pytest.raises(ValueError, match="float32"):
        cpu_quant.matvec(packed, np.ones(256, np.float32), np.empty(2, np.float64))
    with pytest.raises(IndexError, match="row indices"):
        cpu_quant.matvec_rows(packed, np.ones(256, np.float32), np.array([0, 2]), np.empty(2, np.float32))
    with pytest.raises(ValueError, match="blocks=True"):
        cpu_quant.matvec(packed, cpu_quant.prepare(np.ones(256, np.float32), blocks=False), np.empty(2, np.float32))
