"""The decode table's model of a token (`tools/gpu_token_model.py`), on the CPU stand-in device: its byte counts
against the GPU side's own sizes, its columns adding up, its copies where the placement puts them."""

import numpy as np
import pytest

import hybridinfer
from hybridinfer.eval.benchmark import decode_rate
from hybridinfer.hybrid.report import hybrid_report
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.predictors.file import load_predictors
from tools.gpu_check import model_row
from tools.gpu_check_steps import modelled_token
from tools.synth_gguf import synthesize

N_CTX, N_TOKENS = 128, 4


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("s") / "tiny", "tiny", progress=lambda message: None)


def decoded(engine) -> dict:
    rate = decode_rate(engine, N_TOKENS)
    report = hybrid_report(engine)
    return modelled_token(engine, report, 1000 / rate, N_TOKENS)


def test_every_layer_on_the_gpu_reads_its_weights_and_the_kv_it_uses(synthetic, monkeypatch):
    monkeypatch.setenv("HYBRIDINFER_GPU_KV", "f32")
    model, _, _ = synthetic
    engine = hybridinfer.load(str(model), n_ctx=N_CTX, device="cpu", n_gpu_layers=3)
    side, c = engine.gpu_side, engine.config
    row = decoded(engine)
    kv_full = sum(layer.k_cache.numel() * 4 * 2 for layer in side.layers.values())
    norms = 2 * c.n_embd * 4 * len(side.layers) + c.n_embd * 4
    kv_used = len(side.layers) * 2 * c.n_head_kv * c.head_dim * 4 * (10 + N_TOKENS // 2)
    assert row["gpu_bytes"] == side.nbytes - kv_full - norms + kv_used
    assert row["cpu_bytes"] == 0
    assert row["copies"] == 2  # the embedding up, the logits down
    assert row["copy_bytes"] == c.n_embd * 4 + c.n_vocab * 4
    assert row["launches"] > 2 * len(side.layers)


def test_a_split_run_counts_both_sides_and_its_columns_add_up(synthetic):
    model, predictors, activations = synthetic
    file = GGUFFile(str(model))
    config = ModelConfig.from_gguf(file)
    memory = memory_model(file, config, N_CTX, "cpu", load_predictors(str(predictors),
                                                                    Fingerprint.of_model(file, config)))
    half = memory.workspace + sum(memory.layer) + memory.output + sum(memory.neuron) * config.n_ff // 2
    engine = hybridinfer.load(str(model), n_ctx=N_CTX, device="cpu", predictors=str(predictors),
                              vram_budget=str(half))
    side = engine.gpu_side
    assert side.layers and side.n_hot > 0 and any(not layer.dense for layer in side.layers.values())
    row = decoded(engine)
    weights = engine.model.weights
    dense_bytes = weights.nbytes + side.nbytes  # an upper bound: every matrix of both sides, whole
    assert 0 < row["gpu_bytes"] < dense_bytes and 0 < row["cpu_bytes"] < dense_bytes
    assert row["copies"] >= 2
    assert row["gpu_ms"] + row["cpu_ms"] + row["transfer_ms"] + row["other_ms"] == pytest.approx(row["measured_ms"])
    parts = ("model_gpu_ms", "model_launch_ms", "model_cpu_ms", "model_copy_ms")
    assert sum(row[key] for key in parts) == pytest.approx(row["model_ms"])
    assert all(row[key] > 0 for key in parts)
    probe = row["probe"]
    assert all(np.isfinite(value) and value > 0 for value in probe.values())
    line = model_row({"label": "split", "model": row})
    assert line.startswith("| split |") and line.count("|") == 13
