"""The hybrid runtime: with --exact or an oracle mask it equals the dense model at every placement."""

import os

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.hybrid_setup import install_hybrid
from hybridinfer.model import ffn_activation, rms_norm
from hybridinfer.placement.split_file import Split, load_split, save_split
from hybridinfer.profiling import profile_activations, save_profile
from tiny_models import random_weights, write_tiny_gguf

IDS = [1, 100, 200, 17, 270, 5, 66, 9, 33, 12]
# `make gpu-check` runs these tests with HYBRIDINFER_TEST_DEVICE=cuda (float32 on the GPU for exactness)
DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
N_FF = 192


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    weights = random_weights(seed=71, n_layer=3, n_ff=N_FF, gate_bias=-8.0)
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "relu.gguf", weights, activation="fatrelu", threshold=0.02)


@pytest.fixture(scope="module")
def dense_logits(relu_model):
    return hybridinfer.load(str(relu_model), backend="reference").logits(IDS)


def decode_logits(engine, ids):
    engine.reset()
    return np.stack([engine.feed(ids[: i + 1])[0] for i in range(len(ids))])


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def make_split(engine, hot):
    return Split([np.asarray(h, dtype=np.int64) for h in hot], N_FF, 1 << 30, engine.n_ctx, 4, 1,
                 fixed_bytes=1, hot_bytes=0, gpu_share=0.0, fingerprint=engine.fingerprint)


rng = np.random.default_rng(5)
PLACEMENTS = {
    "all-cpu": [[], [], []],
    "mixed": [np.arange(N_FF), [], np.sort(rng.choice(N_FF, 70, replace=False))],  # all-GPU, all-CPU, mixed layers
    "all-gpu": [np.arange(N_FF)] * 3,
}


class Oracle:
    """The true activation mask (what a perfect predictor would say)."""

    def __init__(self, engine):
        self.engine = engine
        self.n_params = 0

    def to(self, device):
        return self

    def active(self, index, residual):
        layer = self.engine.model.weights.layers[index]  # FFN weights stay in CPU memory
        x = rms_norm(residual.float().cpu(), layer.ffn_norm.float().cpu(), self.engine.config.rms_eps)
        return (ffn_activation(x @ layer.ffn_gate.T, self.engine.config) != 0).to(residual.device)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("mask", ["exact", "oracle"])
def test_hybrid_equals_dense(relu_model, dense_logits, placement, mask):
    engine = hybridinfer.load(str(relu_model), backend="reference")
    predictors = Oracle(engine) if mask == "oracle" else None
    hybrid = install_hybrid(engine, make_split(engine, PLACEMENTS[placement]), DEVICE, predictors, torch.float32)
    assert relative_error(decode_logits(engine, IDS), dense_logits) < 1e-5
    assert relative_error(engine.logits(IDS), dense_logits) < 1e-5
    s = hybrid.stats
    assert s.calls == len(IDS) * 3
    if placement == "all-cpu":
        assert s.gpu_active == 0 and s.cpu_active > 0
    if placement == "all-gpu":
        assert s.cpu_active == 0 and s.gpu_active > 0


def test_vram_budget_from_an_activations_file(relu_model, dense_logits, tmp_path):
    engine = hybridinfer.load(str(relu_model), backend="reference")
    profile = profile_activations(engine, [IDS])
    save_profile(profile, tmp_path / "a.gguf")
    for budget in ("0", "100MiB", "1GiB"):
        hybrid_engine = hybridinfer.load(str(relu_model), vram_budget=budget, activations=str(tmp_path / "a.gguf"))
        assert relative_error(decode_logits(hybrid_engine, IDS), dense_logits) < 1e-5
        n_hot = hybrid_engine.hybrid.n_hot
        assert n_hot == (0 if budget == "0" else 3 * N_FF if budget == "1GiB" else n_hot)


def test_split_file_refusals(relu_model, tmp_path):
    engine = hybridinfer.load(str(relu_model), n_ctx=64, backend="reference")
    split = make_split(engine, PLACEMENTS["mixed"])
    split.n_ctx, split.vram_budget = 64, 2 << 30
    save_split(split, tmp_path / "s.gguf")
    loaded = load_split(tmp_path / "s.gguf", engine.fingerprint)
    assert [h.tolist() for h in loaded.hot] == [np.asarray(h).tolist() for h in PLACEMENTS["mixed"]]
    with pytest.raises(HybridInferError, match="budget"):
        hybridinfer.load(str(relu_model), n_ctx=64, split=str(tmp_path / "s.gguf"), vram_budget="1GiB")
    with pytest.raises(HybridInferError, match="context"):
        hybridinfer.load(str(relu_model), n_ctx=128, split=str(tmp_path / "s.gguf"))
    other = write_tiny_gguf(tmp_path / "other.gguf", random_weights(seed=72, n_layer=3, n_ff=N_FF), activation="relu")
    with pytest.raises(HybridInferError, match="another model"):
        hybridinfer.load(str(other), n_ctx=64, split=str(tmp_path / "s.gguf"))
    with pytest.raises(HybridInferError, match="activation counts"):
        hybridinfer.load(str(relu_model), vram_budget="1GiB")


def test_generate_cli_reports_the_hybrid_split(relu_model, tmp_path):
    import json
    from click.testing import CliRunner
    from hybridinfer.cli.main import cli
    engine = hybridinfer.load(str(relu_model), backend="reference")
    save_profile(profile_activations(engine, [IDS]), tmp_path / "a.gguf")
    args = ["generate", "-m", str(relu_model), "-p", "the world", "-n", "6", "--temp", "0",
            "--vram-budget", "70MiB", "--activations", str(tmp_path / "a.gguf"), "--device", "cpu"]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    hybrid = json.loads(result.stdout)["hybrid"]
    assert hybrid["gpu_ffn_share"] + hybrid["cpu_ffn_share"] == pytest.approx(1.0)
    assert hybrid["attention_ms_per_token"] > 0 and hybrid["cpu_ffn_mb_per_token"] >= 0
    dense = CliRunner().invoke(cli, ["generate", "-m", str(relu_model), "-p", "the world", "-n", "6", "--temp", "0",
                                     "--json"])
    assert json.loads(dense.stdout)["tokens"] == json.loads(result.stdout)["tokens"]
    text = CliRunner().invoke(cli, args)
    assert "CPU/GPU" in text.stderr and "GPU FFN" in text.stderr


def test_hybrid_with_predictors_equals_the_cpu_sparse_path(relu_model):
    """A (random) predictor drops neurons; the hybrid split must drop exactly the same ones."""
    from predictors.model import PredictorSet
    from hybridinfer.sparse_ffn import PredictedSparseFFN
    gen = torch.Generator().manual_seed(3)
    n_embd = hybridinfer.load(str(relu_model), backend="reference").config.n_embd
    predictor_set = PredictorSet([torch.randn(16, n_embd, generator=gen) for _ in range(3)],
                                 [torch.randn(N_FF, 16, generator=gen) for _ in range(3)], [0.5, 0.0, -0.5])
    cpu_only = hybridinfer.load(str(relu_model), backend="reference")
    cpu_only.model.sparse_ffn = PredictedSparseFFN(cpu_only.config, cpu_only.model.weights, predictor_set)
    expected = decode_logits(cpu_only, IDS)
    assert relative_error(expected, hybridinfer.load(str(relu_model), backend="reference").logits(IDS)) > 1e-3  # really approximate
    engine = hybridinfer.load(str(relu_model), backend="reference")
    install_hybrid(engine, make_split(engine, PLACEMENTS["mixed"]), DEVICE, predictor_set, torch.float32)
    assert relative_error(decode_logits(engine, IDS), expected) < 1e-5
    assert relative_error(engine.logits(IDS), cpu_only.logits(IDS)) < 1e-5
