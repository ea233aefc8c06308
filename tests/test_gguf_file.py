"""Opening GGUF files: PowerInfer magic, and one-line errors for every broken input."""

import pytest

from hybridinfer.config import ModelConfig
from hybridinfer.errors import HybridInferError
from hybridinfer.gguf_file import GGUFFile
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", random_weights())


def test_reads_metadata_and_tensor_shapes(tiny):
    model = GGUFFile(tiny)
    config = ModelConfig.from_gguf(model)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_head_kv, config.n_ff) == (2, 64, 4, 2, 96)
    assert config.activation == "silu" and not config.tied_embeddings and not model.is_powerinfer
    assert model.tensor("blk.0.ffn_gate.weight").shape == (96, 64)


def test_powerinfer_magic_is_accepted_and_means_relu(tmp_path):
    path = write_tiny_gguf(tmp_path / "pwri.gguf", random_weights(), powerinfer=True)
    model = GGUFFile(path)
    assert model.is_powerinfer
    assert ModelConfig.from_gguf(model).activation == "relu"
    assert model.tensor("blk.1.ffn_down_t.weight").shape == (96, 64)


def _error(path) -> str:
    with pytest.raises(HybridInferError) as info:
        ModelConfig.from_gguf(GGUFFile(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "text.gguf"
    path.write_text("hello, I am not a model")
    assert "not a GGUF file" in _error(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_truncated(tiny, tmp_path, keep):
    data = tiny.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    assert "truncated" in _error(path)


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "gpt.gguf", random_weights(), arch="gptneox")
    assert "gptneox" in _error(path) and "not supported" in _error(path)


def test_unsupported_activation(tmp_path):
    path = write_tiny_gguf(tmp_path / "act.gguf", random_weights(), activation="gelu")
    assert "gelu" in _error(path)
