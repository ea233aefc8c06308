"""Activation profiling: counts against transformers' own activations, the file round trip, fingerprint
refusal, PowerInfer export and the CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.runtime.activations import profile_activations
from hybridinfer.hybrid.activations_file import export_powerinfer, load_profile, plot_profile, save_profile
from tiny_models import random_weights, write_tiny_gguf

THRESHOLD = 0.05


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    relu = write_tiny_gguf(root / "relu.gguf", random_weights(seed=51, n_ff=128, gate_bias=-6.0),
                           activation="fatrelu", threshold=THRESHOLD)
    other = write_tiny_gguf(root / "other.gguf", random_weights(seed=52, n_ff=128), activation="relu")
    return relu, other


CHUNKS = [[1, 40, 41, 42, 100, 200, 7], [1, 99, 98, 97, 96, 95, 94, 93, 92]]


def transformers_counts(path):
    """Firing counts from transformers' LlamaForCausalLM on the same GGUF, hooked on its activation."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    counts = []

    class Counting(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index

        def forward(self, v):
            out = torch.where(v >= THRESHOLD, v, torch.zeros_like(v))
            counts[self.index] += (out[0] != 0).sum(0)
            return out

    for i, layer in enumerate(model.model.layers):
        counts.append(torch.zeros(layer.mlp.gate_proj.out_features, dtype=torch.int64))
        layer.mlp.act_fn = Counting(i)
    with torch.no_grad():
        for chunk in CHUNKS:
            model(torch.tensor([chunk]))
    return torch.stack(counts).numpy()


def test_counts_match_transformers_activations(models):
    relu, _ = models
    profile = profile_activations(hybridinfer.load(str(relu)), CHUNKS)
    assert profile.n_tokens == sum(map(len, CHUNKS))
    np.testing.assert_array_equal(profile.counts, transformers_counts(relu))
    sparsity = profile.layer_sparsity()
    assert ((sparsity > 0.05) & (sparsity < 0.999)).all()  # a mix of firing and silent neurons
    assert ((profile.layer_skew() >= 0.2) & (profile.layer_skew() <= 1.0)).all()


def test_file_round_trip_fingerprint_and_powerinfer_export(models, tmp_path):
    relu, other = models
    engine = hybridinfer.load(str(relu))
    profile = profile_activations(engine, CHUNKS)
    save_profile(profile, tmp_path / "m.act.gguf")
    loaded = load_profile(tmp_path / "m.act.gguf", engine.fingerprint)
    np.testing.assert_array_equal(loaded.counts, profile.counts)
    assert loaded.n_tokens == profile.n_tokens
    with pytest.raises(HybridInferError, match="another model"):
        load_profile(tmp_path / "m.act.gguf", hybridinfer.load(str(other)).fingerprint)
    exported = export_powerinfer(profile, tmp_path / "pi")
    for i in range(engine.config.n_layer):
        np.testing.assert_array_equal(torch.load(exported / f"activation_{i}.pt").numpy(), profile.counts[i])
    plot_profile(profile, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_profile_json(models, tmp_path):
    relu, _ = models
    corpus = tmp_path / "text.txt"
    corpus.write_text("the world is a hello of it and that " * 40)
    result = CliRunner().invoke(cli, ["profile", "-m", str(relu), "--corpus", str(corpus), "--tokens", "300",
                                      "--chunk", "64", "-o", str(tmp_path / "a.gguf"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_tokens"] >= 300 and 0 < summary["average_sparsity"] < 1
    assert len(summary["layers"]) == 2
