"""convert/k_quants.py, llama.cpp's reference K-quant encoders in numpy: on fresh random rows (fixed seed, several
magnitudes, zero and constant sub-blocks) the blocks decode through gguf-py's dequantizers within each format's
error, and, when llama-cpp-python is installed, they are llama.cpp's bytes."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.convert import k_quants
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.tensor_shapes import FFN_UP, tensor_name
from k_quants_scalar import quantize_q4_k_block, quantize_q5_k_block, quantize_q6_k_block
from llamacpp_quantize import llama_quantize

MAGNITUDES = (1e-4, 0.02, 1.0, 300.0)
# Below ~1e-3 the f16 super-block scale is subnormal and loses precision (in llama.cpp too): those rows are checked
# against llama.cpp's bytes only.
ROUND_TRIP_MAGNITUDES = (0.02, 1.0, 300.0)
# (relative RMS error on Gaussian rows, max |error| over the row's max |value|): the format's resolution with margin
BOUNDS = {T.Q4_K: (0.08, 0.08), T.Q5_K: (0.04, 0.042), T.Q6_K: (0.02, 0.02)}
MIXES = {T.Q4_K: "q4_k_m", T.Q5_K: "q5_k_m", T.Q6_K: "q6_k"}
SCALAR_TWINS = {T.Q4_K: quantize_q4_k_block, T.Q5_K: quantize_q5_k_block, T.Q6_K: quantize_q6_k_block}


def sample_rows(seed: int, magnitude: float, n_rows: int = 24, n_cols: int = 768) -> np.ndarray:
    """Gaussian rows with hard cases: zero and constant 32-value and 16-value sub-blocks, a zero super-block, a
    positive row, heavy tails, one spike."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_cols)) * magnitude
    x[0, :32] = 0
    x[1, 32:64] = magnitude
    x[2, 256:512] = 0
    x[3, :16] = -magnitude
    x[4] = rng.uniform(0, magnitude, n_cols)
    x[5] = rng.standard_t(2, n_cols) * magnitude
    x[6, 100] = 50 * magnitude
    x[7, :256] = np.where(rng.random(256) < 0.9, 0, x[7, :256])
    return x.astype(np.float32)


@pytest.mark.parametrize("qtype", k_quants.QUANTIZERS, ids=lambda t: t.name)
@pytest.mark.parametrize("magnitude", ROUND_TRIP_MAGNITUDES)
def test_blocks_decode_within_the_formats_error(qtype, magnitude):
    x = sample_rows(seed=11, magnitude=magnitude)
    blocks = k_quants.quantize(x, qtype)
    assert blocks.dtype == np.uint8
    assert blocks.shape == (x.shape[0], x.shape[1] // 256 * gguf.GGML_QUANT_SIZES[qtype][1])
    decoded = quants.dequantize(blocks, qtype)
    rms_bound, max_bound = BOUNDS[qtype]
    gaussian = slice(8, None)
    error = decoded[gaussian] - x[gaussian]
    assert np.sqrt((error ** 2).mean() / (x[gaussian] ** 2).mean()) < rms_bound
    assert (np.abs(decoded - x).max(axis=1) <= max_bound * np.abs(x).max(axis=1)).all()
    assert (decoded[0, :32] == 0).all() and (decoded[2, 256:512] == 0).all()
    assert np.abs(decoded[1, 32:64] - magnitude).max() <= max_bound * magnitude


@pytest.mark.parametrize("qtype", k_quants.QUANTIZERS, ids=lambda t: t.name)
def test_blocks_equal_the_scalar_transcription(qtype):
    """The vectorized encoders against tests/k_quants_scalar.py, llama.cpp's loops one float32 at a time, on the
    hard rows' first blocks and two Gaussian ones at every magnitude (the f16-subnormal 1e-4 too)."""
    for magnitude in MAGNITUDES:
        blocks = sample_rows(seed=23, magnitude=magnitude)[[0, 1, 2, 3, 4, 5, 6, 7, 12, 20]].reshape(-1, 256)
        blocks = blocks[[0, 3, 7, 9, 12, 15, 18, 21, 24, 27]]  # each hard case's block, then two Gaussian ones
        ours = k_quants.quantize(blocks, qtype)
        for block, encoded in zip(blocks, ours):
            assert encoded.tobytes() == SCALAR_TWINS[qtype](block), (qtype.name, magnitude)


def test_nearest_int_rounds_half_to_even_as_llama_cpp():
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.7, -3.7, 0.49999997, 4194303.0], dtype=np.float32)
    assert k_quants.nearest_int(values).tolist() == [0, 2, 2, 0, -2, -2, 4, -4, 0, 4194303]


def test_all_zero_rows_encode_to_zero_values():
    for qtype in k_quants.QUANTIZERS:
        assert (quants.dequantize(k_quants.quantize(np.zeros((2, 512), np.float32), qtype), qtype) == 0).all()


def test_rows_of_partial_super_blocks_are_refused():
    with pytest.raises(ValueError, match="256"):
        k_quants.quantize(np.ones((2, 96), np.float32), T.Q4_K)


@pytest.mark.parametrize("qtype", k_quants.QUANTIZERS, ids=lambda t: t.name)
def test_bytes_equal_llama_cpp_quantizer(qtype, tmp_path):
    """Rows of every magnitude as one F32 GGUF, quantized by llama.cpp (--pure: every matrix the mix's base type)."""
    rows = {tensor_name(FFN_UP, i): sample_rows(seed=100 + i, magnitude=magnitude, n_cols=512)
            for i, magnitude in enumerate(MAGNITUDES)}
    source = tmp_path / "f32.gguf"
    writer = gguf.GGUFWriter(source, "llama")
    for key, value in (("context_length", 64), ("embedding_length", 512), ("feed_forward_length", 24),
                       ("block_count", len(rows)), ("attention.head_count", 4), ("attention.head_count_kv", 4)):
        getattr(writer, f"add_{key.replace('attention.', '')}")(value)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, values in rows.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama_quantize(source, tmp_path / "q.gguf", MIXES[qtype], pure=True)
    theirs = GGUFFile(tmp_path / "q.gguf")
    for name, values in rows.items():
        assert theirs.tensor(name).type == qtype
        assert np.array_equal(np.asarray(theirs.tensor(name).raw).reshape(values.shape[0], -1),
                              k_quants.quantize(values, qtype)), name
