"""The loader's native decoders (`weight_formats.py`) against the `gguf` package's dequantization, for every
format of the registry."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.model_file.dequantize import dequantize
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.weight_formats import FORMATS
from tiny_models import random_weights, stored_weights, write_tiny_gguf


@pytest.mark.parametrize("weight_type", tuple(FORMATS), ids=lambda t: t.name)
def test_native_types_match_gguf_reference(tmp_path, weight_type):
    weights = random_weights(seed=int(weight_type) + 1)
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, weight_type=weight_type)
    model = GGUFFile(path)
    expected = stored_weights(weights, weight_type)
    for name, tensor in model.tensors.items():
        assert tensor.type == (weight_type if expected[name].ndim == 2 else T.F32)
        ours = dequantize(tensor)
        reference = quants.dequantize(np.asarray(tensor.raw), tensor.type).reshape(tensor.shape)
        np.testing.assert_array_equal(ours, reference)
        np.testing.assert_array_equal(ours, expected[name])


def test_other_types_are_dequantized_through_gguf_with_a_notice(tmp_path, caplog):
    weights = random_weights(n_embd=256, n_head=4, n_ff=256, seed=3)
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, weight_type=T.Q5_0)
    tensor = GGUFFile(path).tensor("blk.0.ffn_up.weight")
    with caplog.at_level("WARNING"):
        values = dequantize(tensor)
    assert "Q5_0" in caplog.text
    reference = quants.dequantize(np.asarray(tensor.raw), T.Q5_0).reshape(tensor.shape)
    np.testing.assert_array_equal(values, reference)
    assert np.abs(values - weights["blk.0.ffn_up.weight"]).max() < 0.1
