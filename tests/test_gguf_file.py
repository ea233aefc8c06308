"""Opening GGUF files: PowerInfer magic, and one-line errors for every broken input."""

import pytest

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.gguf_file import GGUFFile
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


def _gguf_package_view(path):
    """Metadata and tensors as the `gguf` package's own reader (the reference twin of gguf_header) sees them."""
    from gguf import GGUFReader, GGUFValueType
    reader = GGUFReader(path)
    metadata = {key: list(f.contents()) if f.types[0] == GGUFValueType.ARRAY else f.contents()
                for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    return metadata, {t.name: t.data for t in reader.tensors}


@pytest.mark.parametrize("which", ["tiny", "pwri", "smollm2"])
def test_header_reader_matches_the_gguf_package(tiny, tmp_path, which):
    import numpy as np
    from hybridinfer.default_model import default_model_path
    path = {"tiny": tiny, "pwri": None, "smollm2": default_model_path()}[which]
    if which == "pwri":
        path = write_tiny_gguf(tmp_path / "pwri.gguf", random_weights(seed=3), powerinfer=True)
        data = bytearray(path.read_bytes())
        data[:4] = b"GGUF"  # the gguf package reads GGUF magic only
        (tmp_path / "as-gguf.gguf").write_bytes(bytes(data))
        reference_path = tmp_path / "as-gguf.gguf"
    else:
        if not path.exists():
            pytest.skip("the default model is fetched by `make test`")
        reference_path = path
    ours = GGUFFile(path)
    metadata, tensors = _gguf_package_view(str(reference_path))
    assert ours.metadata == metadata
    assert list(ours.tensors) == list(tensors)
    for name, data in tensors.items():
        raw = ours.tensor(name).raw
        assert raw.shape == data.shape and raw.dtype == data.dtype, name
        assert np.array_equal(raw.view(np.uint8), data.view(np.uint8)), name


def test_overlapping_and_misaligned_tensors_are_refused(tiny, tmp_path):
    from tools.gguf_mutants import Layout, Mutant, _base, _patched, assemble
    layout = Layout.of(str(tiny))
    for value, needle in [(0, "overlap"), (8, "not a multiple of the alignment"), (2**40, "truncated")]:
        metadata, tensors = _base(layout)
        tensors[-1] = _patched(layout.tensors[-1], "offset", value)
        path = tmp_path / f"bad-{value}.gguf"
        Mutant("edit", assemble(layout, metadata, tensors), layout).write(str(path))
        assert needle in _error(path)
