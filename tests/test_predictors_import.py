"""Importing PowerInfer predictors: a directory of model_{i}.pt (+ config.json) and the fc1/fc2 tensors of a
PowerInfer (PWRI) GGUF, written here in PowerInfer's layouts."""

import json

import pytest
import torch

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.predictors.powerinfer_import import import_powerinfer
from test_predictors_support import sparse_weights, write_sparse_model
from tiny_models import write_tiny_gguf

N_LAYER, N_EMBD, N_FF = 12, 32, 48  # twelve layers, so that model_10.pt sorts after model_2.pt


def model_of(path):
    model = GGUFFile(path)
    config = ModelConfig.from_gguf(model)
    return config, Fingerprint.of_model(model, config)


def powerinfer_layers(seed: int, n_layer: int = N_LAYER, n_embd: int = N_EMBD, n_ff: int = N_FF):
    """PowerInfer state dicts: layer i has hidden width 4 + i, so a misordered import shows in the shapes."""
    generator = torch.Generator().manual_seed(seed)
    return [{"fc1.weight": torch.randn(4 + i, n_embd, generator=generator),
             "fc2.weight": torch.randn(n_ff, 4 + i, generator=generator)} for i in range(n_layer)]


def write_directory(path, layers, threshold=None):
    path.mkdir()
    for i, state in enumerate(layers):
        torch.save(state, path / f"model_{i}.pt")
    if threshold is not None:
        (path / "config.json").write_text(json.dumps({"sparse_threshold": threshold}))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.gguf"
    return write_sparse_model(path, seed=41, n_layer=N_LAYER, n_embd=N_EMBD, n_ff=N_FF)


def test_directory_import_orders_layers_numerically(model, tmp_path):
    layers = powerinfer_layers(1)
    config, fingerprint = model_of(model)
    predictors, kind = import_powerinfer(str(write_directory(tmp_path / "pred", layers, 0.3)), config, fingerprint)
    assert kind == "powerinfer-directory" and predictors.ranks == [4 + i for i in range(N_LAYER)]
    assert predictors.thresholds == [0.3] * N_LAYER
    for i in (2, 10):
        assert torch.equal(predictors.fc1[i], layers[i]["fc1.weight"])
        assert torch.equal(predictors.fc2[i], layers[i]["fc2.weight"])


def test_directory_without_config_uses_threshold_zero(model, tmp_path):
    config, fingerprint = model_of(model)
    directory = write_directory(tmp_path / "pred", powerinfer_layers(2))
    predictors, _ = import_powerinfer(str(directory), config, fingerprint)
    assert predictors.thresholds == [0.0] * N_LAYER


@pytest.mark.parametrize("damage,needle", [
    ("missing_layer", "lacks the predictor of layer 5"),
    ("extra_layer", "predictors for 13 layers"),
    ("wide_fc1", "fc1.weight has shape (7, 40)"),
    ("wrong_fc2", "fc2.weight has shape (50, 4)"),
    ("not_a_state_dict", "cannot read"),
    ("empty", "no model_<layer>.pt"),
])
def test_bad_directories_are_one_line_errors(model, tmp_path, damage, needle):
    layers = powerinfer_layers(3)
    if damage == "extra_layer":
        layers = layers + powerinfer_layers(4, n_layer=1)
    elif damage == "wide_fc1":
        layers[3]["fc1.weight"] = torch.randn(7, 40)
    elif damage == "wrong_fc2":
        layers[0]["fc2.weight"] = torch.randn(50, 4)
    elif damage == "empty":
        layers = []
    directory = write_directory(tmp_path / "pred", layers)
    if damage == "missing_layer":
        (directory / "model_5.pt").unlink()
    if damage == "not_a_state_dict":
        (directory / "model_0.pt").write_bytes(b"not a pickle")
    config, fingerprint = model_of(model)
    with pytest.raises(HybridInferError, match=needle.replace("(", r"\(").replace(")", r"\)")) as info:
        import_powerinfer(str(directory), config, fingerprint)
    assert "\n" not in str(info.value)


def test_powerinfer_gguf_import(model, tmp_path):
    weights = sparse_weights(41, N_LAYER, N_EMBD, N_FF)  # the same weights as `model`
    layers = powerinfer_layers(5)
    for i, state in enumerate(layers):
        weights[f"blk.{i}.fc1.weight"] = state["fc1.weight"].numpy()
        weights[f"blk.{i}.fc2.weight"] = state["fc2.weight"].numpy()
    path = write_tiny_gguf(tmp_path / "m.powerinfer.gguf", weights, powerinfer=True,
                           extra={"powerinfer.sparse_threshold": 0.25})
    assert GGUFFile(path).is_powerinfer and GGUFFile(path).tensor("blk.3.fc1.weight").shape == (7, N_EMBD)
    config, fingerprint = model_of(model)
    predictors, kind = import_powerinfer(str(path), config, fingerprint)
    assert kind == "powerinfer-gguf" and predictors.ranks == [4 + i for i in range(N_LAYER)]
    assert predictors.thresholds == pytest.approx([0.25] * N_LAYER)
    for i in (1, 11):
        assert torch.equal(predictors.fc1[i], layers[i]["fc1.weight"])
        assert torch.equal(predictors.fc2[i], layers[i]["fc2.weight"])

    other = write_sparse_model(tmp_path / "other.gguf", seed=42, n_layer=N_LAYER, n_embd=N_EMBD, n_ff=N_FF)
    with pytest.raises(HybridInferError, match="another model with the same shape"):
        import_powerinfer(str(path), *model_of(other))
    smaller = write_sparse_model(tmp_path / "small.gguf", seed=43, n_layer=4, n_embd=N_EMBD, n_ff=N_FF)
    with pytest.raises(HybridInferError, match="predictors for 12 layers, but the model has 4"):
        import_powerinfer(str(path), *model_of(smaller))


def test_a_gguf_without_predictors_is_refused(model):
    config, fingerprint = model_of(model)
    with pytest.raises(HybridInferError, match="no blk.N.fc1.weight"):
        import_powerinfer(str(model), config, fingerprint)
    with pytest.raises(HybridInferError, match="not found"):
        import_powerinfer("/nonexistent/predictors", config, fingerprint)
