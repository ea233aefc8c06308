"""`hybridinfer predictors train / import / info` smoke tests, and one-line errors with no output left behind."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hybridinfer.cli.main import cli
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.predictors.file import load_predictors
from test_predictors_support import N_EMBD, N_FF, sparse_weights, text_corpus_file, write_sparse_model
from test_predictors_support import one_thread  # noqa: F401 (an autouse fixture)
from tiny_models import random_weights, write_tiny_gguf

TRAIN = ["--tokens", "1500", "--chunk-tokens", "64", "--epochs", "4", "--device", "cpu", "-t", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"model": write_sparse_model(root / "m.gguf", seed=51),
            "silu": write_tiny_gguf(root / "silu.gguf", random_weights(seed=52)),
            "corpus": text_corpus_file(root / "corpus.txt", seed=53)}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fingerprint_of(path):
    model = GGUFFile(path)
    return Fingerprint.of_model(model, ModelConfig.from_gguf(model))


def test_train_json_then_info(files, tmp_path):
    output = tmp_path / "m.pred.gguf"
    result = invoke("predictors", "train", "-m", files["model"], "--corpus", files["corpus"], "--no-default-corpus",
                    "--rank", "8", "-o", output, "--json", *TRAIN)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["tokens"] == {"train": 1200, "validation": 150, "test": 150}
    assert len(summary["layers"]) == 2 and {m["rank"] for m in summary["layers"]} == {8}
    assert set(summary["layers"][0]) >= {"recall", "predicted_sparsity", "true_sparsity", "prior_recall", "threshold"}
    assert set(summary["average"]) >= {"recall", "predicted_sparsity", "true_sparsity"}
    assert summary["predictor_parameters"] == 2 * 8 * (N_EMBD + N_FF)
    assert 0 < summary["predictor_share"] < 0.1
    predictors = load_predictors(str(output), fingerprint_of(files["model"]))
    assert predictors.thresholds == pytest.approx([m["threshold"] for m in summary["layers"]])

    result = invoke("predictors", "info", output, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["source"] == "trained" and info["n_layer"] == 2 and info["test_tokens"] == 150
    assert info["layers"][1]["recall"] == pytest.approx(summary["layers"][1]["recall"], rel=1e-6)

    result = invoke("predictors", "info", output)
    assert result.exit_code == 0 and "pred.sparsity" in result.stdout and "mean" in result.stdout


def test_train_table_with_automatic_rank(files, tmp_path):
    output = tmp_path / "m.pred.gguf"
    result = invoke("predictors", "train", "-m", files["model"], "--corpus", files["corpus"], "--no-default-corpus",
                    "--rank", "auto", "--workdir", tmp_path / "work", "-o", output, *TRAIN)
    assert result.exit_code == 0, result.output
    assert "pred.sparsity" in result.stdout and "of the model's" in result.stdout
    assert (tmp_path / "work" / "collection.json").exists()


def test_import_directory_json(files, tmp_path):
    directory = tmp_path / "powerinfer"
    directory.mkdir()
    for i in range(2):
        state = {"fc1.weight": torch.randn(16, N_EMBD), "fc2.weight": torch.randn(N_FF, 16)}
        torch.save(state, directory / f"model_{i}.pt")
    (directory / "config.json").write_text('{"sparse_threshold": 0.1}')
    output = tmp_path / "imported.pred.gguf"
    result = invoke("predictors", "import", directory, "-m", files["model"], "-o", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source_kind"] == "powerinfer-directory" and summary["ranks"] == [16, 16]
    assert summary["thresholds"] == pytest.approx([0.1, 0.1])
    info = json.loads(invoke("predictors", "info", output, "--json").stdout)
    assert info["source"] == "powerinfer-directory" and info["source_path"].endswith("powerinfer")


def test_import_powerinfer_gguf_defaults_to_the_model_itself(tmp_path):
    weights = sparse_weights(54)
    for i in range(2):
        weights[f"blk.{i}.fc1.weight"] = np.random.default_rng(i).standard_normal((12, N_EMBD)).astype(np.float32)
        weights[f"blk.{i}.fc2.weight"] = np.random.default_rng(i).standard_normal((N_FF, 12)).astype(np.float32)
    source = write_tiny_gguf(tmp_path / "m.powerinfer.gguf", weights, powerinfer=True)
    output = tmp_path / "m.pred.gguf"
    result = invoke("predictors", "import", source, "-o", output, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["source_kind"] == "powerinfer-gguf" and summary["ranks"] == [12, 12] and summary["thresholds"] == [0, 0]
    assert load_predictors(str(output), fingerprint_of(source)).n_params == 2 * 12 * (N_EMBD + N_FF)
    result = invoke("predictors", "info", source)
    assert result.exit_code == 1 and "predictors import" in result.stderr


@pytest.mark.parametrize("args,needle", [
    (["train", "-m", "{silu}", "-o", "{out}"], "SiLU"),
    (["train", "-m", "{model}", "-o", "{out}", "--rank", "wide"], "--rank"),
    (["train", "-m", "{model}", "-o", "{out}", "--target-recall", "1.5"], "--target-recall"),
    (["train", "-m", "{model}", "-o", "{out}", "--tokens", "100"], "--tokens"),
    (["train", "-m", "{model}", "-o", "{out}", "--corpus", "/nonexistent.txt"], "corpus file not found"),
    (["train", "-m", "{model}", "-o", "{existing}"], "pass --force"),
    (["train", "-m", "/nonexistent/m.gguf", "-o", "{out}"], "not found"),
    (["import", "{tmp}", "-o", "{out}"], "give the model"),
    (["import", "{model}", "-o", "{out}"], "no blk.N.fc1.weight"),
    (["info", "{model}"], "not a hybridinfer predictor file"),
])
def test_errors_are_one_line_and_leave_no_output(files, tmp_path, args, needle):
    existing = tmp_path / "existing.gguf"
    existing.write_bytes(b"keep me")
    names = {"silu": files["silu"], "model": files["model"], "out": tmp_path / "out.pred.gguf", "existing": existing,
             "tmp": tmp_path}
    result = invoke("predictors", *[a.format(**names) for a in args])
    assert result.exit_code == 1, result.output
    assert needle in result.stderr and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.pred.gguf").exists() and existing.read_bytes() == b"keep me"
