"""The predictor file: round trip (F32 exact, F16 close), metadata keys, refusal of files made for another model,
and no half-written output."""

import os

import gguf
import pytest
import torch

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.predictors import file as predictor_file
from hybridinfer.predictors.file import (METRIC_KEYS, describe_predictor_file, load_predictors, read_predictor_file,
                                         save_predictors)
from hybridinfer.predictors.model import PredictorSet
from test_predictors_support import N_EMBD, N_FF, write_sparse_model


def fingerprint_of(path) -> Fingerprint:
    model = GGUFFile(path)
    return Fingerprint.of_model(model, ModelConfig.from_gguf(model))


def random_set(seed: int, n_layer: int = 2, n_embd: int = N_EMBD, n_ff: int = N_FF) -> PredictorSet:
    generator = torch.Generator().manual_seed(seed)
    ranks = [8 + 8 * i for i in range(n_layer)]
    return PredictorSet([torch.randn(r, n_embd, generator=generator) for r in ranks],
                        [torch.randn(n_ff, r, generator=generator) for r in ranks],
                        torch.randn(n_layer, generator=generator).tolist())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "model": write_sparse_model(root / "a.gguf", seed=31),
        "other_weights": write_sparse_model(root / "b.gguf", seed=32),
        "other_shape": write_sparse_model(root / "c.gguf", seed=33, n_ff=128),
        "other_layers": write_sparse_model(root / "d.gguf", seed=34, n_layer=3),
    }


def test_round_trip_keeps_weights_thresholds_and_metadata(models, tmp_path):
    fingerprint = fingerprint_of(models["model"])
    original = random_set(1)
    path = tmp_path / "a.pred.gguf"
    save_predictors(str(path), original, fingerprint, {METRIC_KEYS["recall"]: [0.9, 0.8], METRIC_KEYS["tokens"]: 600})
    loaded = load_predictors(str(path), fingerprint)
    assert loaded.ranks == [8, 16] and loaded.n_params == original.n_params
    assert loaded.thresholds == pytest.approx(original.thresholds, rel=1e-6)
    for a, b in zip(loaded.fc1 + loaded.fc2, original.fc1 + original.fc2):
        assert torch.equal(a, b)
    x = torch.randn(5, N_EMBD)
    assert torch.equal(loaded.active(1, x), original.active(1, x))
    _, metadata = read_predictor_file(str(path))
    assert metadata["general.architecture"] == "hybridinfer-predictor"
    assert metadata[METRIC_KEYS["recall"]] == pytest.approx([0.9, 0.8]) and metadata[METRIC_KEYS["tokens"]] == 600
    summary = describe_predictor_file(str(path))
    assert summary["n_layer"] == 2 and summary["tensor_type"] == "F32"
    assert summary["layers"][0]["recall"] == pytest.approx(0.9)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_f16_tensors(models, tmp_path):
    fingerprint = fingerprint_of(models["model"])
    original = random_set(2)
    path = tmp_path / "a.pred.gguf"
    save_predictors(str(path), original, fingerprint, outtype="f16")
    assert GGUFFile(path).tensor("blk.1.fc2.weight").type == gguf.GGMLQuantizationType.F16
    loaded = load_predictors(str(path), fingerprint)
    torch.testing.assert_close(loaded.fc2[1], original.fc2[1], rtol=1e-3, atol=1e-3)
    assert os.path.getsize(path) < 0.6 * 4 * original.n_params


@pytest.mark.parametrize("other,needle", [
    ("other_weights", "another model with the same shape"),
    ("other_shape", "n_ff 128"),
    ("other_layers", "the model has 3"),
])
def test_a_file_for_another_model_is_refused(models, tmp_path, other, needle):
    path = tmp_path / "a.pred.gguf"
    save_predictors(str(path), random_set(3), fingerprint_of(models["model"]))
    with pytest.raises(HybridInferError, match=needle) as info:
        load_predictors(str(path), fingerprint_of(models[other]))
    assert "\n" not in str(info.value)


def test_a_model_file_is_not_a_predictor_file(models):
    with pytest.raises(HybridInferError, match="not a hybridinfer predictor file"):
        load_predictors(str(models["model"]), fingerprint_of(models["model"]))


def test_a_failed_write_leaves_nothing(models, tmp_path, monkeypatch):
    path = tmp_path / "a.pred.gguf"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predictor_file.gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(HybridInferError, match="No space left"):
        save_predictors(str(path), random_set(4), fingerprint_of(models["model"]))
    assert os.listdir(tmp_path) == []
    with pytest.raises(HybridInferError, match="does not exist"):
        save_predictors(str(tmp_path / "missing" / "x.gguf"), random_set(4), fingerprint_of(models["model"]))


def test_a_truncated_file_is_a_one_line_error(models, tmp_path):
    path = tmp_path / "a.pred.gguf"
    save_predictors(str(path), random_set(5), fingerprint_of(models["model"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(HybridInferError, match="truncated|corrupt"):
        load_predictors(str(path), fingerprint_of(models["model"]))
