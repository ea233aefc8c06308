"""The loader's native decoders (`weight_formats.py`) against the `gguf` package's dequantization, for every
format of the registry."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.model_file.dequantize import dequantize
from hybridinfer.model_file.gguf_file import GGUFFile, GGUFTensor
from hybridinfer.model_file.weight_formats import FORMATS
from tiny_models import random_weights, stored_weights, write_tiny_gguf


@pytest.mark.parametrize("weight_type", tuple(FORMATS), ids=lambda t: t.name)
def test_native_types_match_gguf_reference(tmp_path, weight_type):
    wide = FORMATS[weight_type].k_quant  # K-quants: rows of whole 256-blocks
    weights = random_weights(seed=int(weight_type) + 1, n_embd=256 if wide else 64, n_ff=256 if wide else 96)
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, weight_type=weight_type)
    model = GGUFFile(path)
    expected = stored_weights(weights, weight_type)
    for name, tensor in model.tensors.items():
        assert tensor.type == (weight_type if expected[name].ndim == 2 else T.F32)
        ours = dequantize(tensor)
        assert ours.dtype == np.float32
        reference = quants.dequantize(np.asarray(tensor.raw), tensor.type).reshape(tensor.shape)
        np.testing.assert_array_equal(ours, reference)
        np.testing.assert_array_equal(ours, expected[name])


def test_other_types_are_dequantized_through_gguf_with_a_notice(caplog):
    rng = np.random.default_rng(3)  # random Q3_K blocks (gguf cannot encode K-quants) with a small f16 d
    blocks = rng.integers(0, 256, (4 * 2, 110), dtype=np.uint8)
    blocks[:, 108:110] = np.full((4 * 2, 1), 0.01, np.float16).view(np.uint8)
    tensor = GGUFTensor("blk.0.ffn_up.weight", T.Q3_K, (4, 512), blocks.reshape(4, -1))
    with caplog.at_level("WARNING"):
        values = dequantize(tensor)
    assert "Q3_K" in caplog.text
    reference = quants.dequantize(blocks.reshape(4, -1), T.Q3_K).reshape(tensor.shape)
    np.testing.assert_array_equal(values, reference)
