"""The one table of tensor names (model_file/tensor_shapes.py): names, their inverse, and the shapes of a file."""

import pytest

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.tensor_shapes import (GLOBAL_PARTS, LAYER_PARTS, OUTPUT, OUTPUT_NORM, TOKEN_EMBD,
                                                  block_name, expected_shape, split_name, tensor_name)
from tiny_models import random_weights, write_tiny_gguf


def test_names_and_their_inverse():
    assert tensor_name("attn_q", 3) == "blk.3.attn_q.weight"
    assert tensor_name("ffn_down_t", 0) == "blk.0.ffn_down_t.weight"
    assert (tensor_name("token_embd"), tensor_name("output_norm"), tensor_name("output")) == \
        (TOKEN_EMBD, OUTPUT_NORM, OUTPUT) == ("token_embd.weight", "output_norm.weight", "output.weight")
    assert block_name("gpu_idx", 2) == "blk.2.gpu_idx"
    for part in LAYER_PARTS:
        assert split_name(tensor_name(part, 12)) == split_name(block_name(part, 12)) == (part, 12)
    for part in GLOBAL_PARTS:
        assert split_name(tensor_name(part)) == (part, None)
    assert split_name("blk.x.attn_q.weight") == ("blk", None)


@pytest.mark.parametrize("part, layer", [("attn_q", None), ("output", 1), ("attn_qq", 0), ("lm_head", None)])
def test_a_name_outside_the_table_is_refused(part, layer):
    with pytest.raises(ValueError, match="tensor_shapes.py"):
        tensor_name(part, layer)


def test_the_table_names_every_tensor_of_a_model_file(tmp_path):
    model = GGUFFile(write_tiny_gguf(tmp_path / "tiny.gguf", random_weights()))
    config = ModelConfig.from_gguf(model)
    for name, tensor in model.tensors.items():
        part, layer = split_name(name)
        assert tensor_name(part, layer) == name
        assert tuple(tensor.shape) == expected_shape(config, name)
