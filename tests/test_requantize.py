"""The numba transpose-and-requantize (`kernels/requantize.py`) against its twin, gguf's own decoder and
encoders: the same bytes, on fresh random weights with the blocks encoders trip on (all zeros, ties, one large
value); a K-quant's transpose in its transpose_type, from random valid K blocks."""

import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.kernels.requantize import requantized, transpose_quantized
from hybridinfer.model_file.weight_formats import CPU_NATIVE_FORMATS, FORMATS
from kquant_blocks import random_k_raw


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # the same every run


@pytest.mark.parametrize("qtype", [f.type for f in CPU_NATIVE_FORMATS if f.quantized and not f.k_quant],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 64), (128, 4128)])
def test_transpose_quantized_gives_gguf_bytes(rng, qtype, shape):
    values = rng.standard_normal(shape, dtype=np.float32) * rng.uniform(0.01, 3.0)
    values[:32, :32] = 0.0  # a block of zeros (d = 0) in both orientations
    values[-32:, -32:] = np.round(values[-32:, -32:] * 2) / 2  # ties in abs max, min, max and rounding
    values[0, -1] = 1e3  # one large value: its block's other quants round to zero
    raw = quants.quantize(values, qtype)
    twin = quants.quantize(np.ascontiguousarray(quants.dequantize(raw, qtype).T), qtype)
    ours = transpose_quantized(raw, qtype, shape)
    assert ours.dtype == np.uint8 and ours.shape == twin.shape
    assert np.array_equal(ours, twin)


@pytest.mark.parametrize("qtype", [f.type for f in CPU_NATIVE_FORMATS if f.k_quant], ids=lambda t: t.name)
@pytest.mark.parametrize("shape", [(32, 256), (96, 512), (64, 4352)])
def test_k_quant_transposes_are_their_transpose_type(rng, qtype, shape):
    raw = random_k_raw(rng, qtype, shape)
    target = FORMATS[qtype].transpose_type
    values = quants.dequantize(raw, qtype)
    ours = transpose_quantized(raw, qtype, shape)
    assert np.array_equal(ours, quants.quantize(np.ascontiguousarray(values.T), target))
    assert np.array_equal(requantized(raw, qtype, shape), quants.quantize(values, target))


def test_transpose_quantized_rejects_what_it_cannot_do():
    raw = quants.quantize(np.ones((48, 64), np.float32), T.Q8_0)
    with pytest.raises(ValueError, match="multiple of 32"):
        transpose_quantized(raw, T.Q8_0, (48, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        transpose_quantized(np.zeros((32, 84), np.uint8), T.Q2_K, (32, 256))
