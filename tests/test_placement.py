"""Placement: the solver against brute force, the memory model against the budget, the split CLI."""

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.hybrid.placement.plan import solve_split
from hybridinfer.hybrid.placement.sizes import parse_size
from hybridinfer.hybrid.placement.solver import place
from hybridinfer.hybrid.activations_file import save_profile
from hybridinfer.runtime.activations import ActivationProfile, profile_activations
from tiny_models import random_weights, write_tiny_gguf


def brute_force(frequency, neuron_bytes, capacity, group):
    """Best total frequency over every choice of a most-active prefix of groups per layer."""
    options = []
    for layer in frequency:
        ordered = np.sort(layer)[::-1]
        cuts = list(range(0, len(layer), group)) + [len(layer)]
        options.append([(ordered[:n].sum(), n * neuron_bytes) for n in cuts])
    best = 0.0
    for combo in itertools.product(*options):
        if sum(cost for _, cost in combo) <= capacity:
            best = max(best, sum(value for value, _ in combo))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layer, n_ff = rng.integers(1, 4), rng.integers(3, 9)
    group = int(rng.integers(1, 4))
    frequency = rng.random((n_layer, n_ff)) ** 3
    neuron_bytes = int(rng.integers(1, 50))
    capacity = int(rng.integers(0, n_layer * n_ff * neuron_bytes + 1))
    placement = place(frequency, neuron_bytes, capacity, group)
    assert placement.value == pytest.approx(brute_force(frequency, neuron_bytes, capacity, group), abs=1e-9)
    assert placement.hot_bytes <= capacity
    assert placement.hot_bytes == sum(len(h) for h in placement.hot) * neuron_bytes
    for layer, hot in zip(frequency, placement.hot):  # each layer's hot set is its most active neurons
        if len(hot):
            assert layer[hot].min() >= np.delete(layer, hot).max(initial=-1)


def profile_of(config, fingerprint, seed):
    counts = (np.random.default_rng(seed).random((config.n_layer, config.n_ff)) ** 4 * 1000).astype(np.int64)
    return ActivationProfile(counts, 1000, fingerprint)


@pytest.fixture(scope="module")
def relu_engine(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "relu.gguf",
                           random_weights(seed=81, n_ff=160, gate_bias=-6.0), activation="relu")
    return hybridinfer.load(str(path))


@pytest.mark.parametrize("seed", range(6))
def test_memory_model_never_exceeds_the_budget(relu_engine, seed):
    rng = np.random.default_rng(seed)
    profile = profile_of(relu_engine.config, relu_engine.fingerprint, seed)
    memory = memory_model(relu_engine.file, relu_engine.config, 128, "cpu")
    every_layer = memory.workspace + sum(memory.layer) + memory.output
    for budget in rng.integers(0, 2 * every_layer, 5):
        for group in (1, 7, 256):
            split = solve_split(relu_engine.config, profile, memory, int(budget), group)
            used = split.fixed_bytes + split.hot_bytes
            assert used <= budget
            if budget < memory.workspace + memory.layer[-1]:
                assert split.all_on_cpu and split.fixed_bytes == 0 and all(len(h) == 0 for h in split.hot)
            assert all(len(h) == 0 for i, h in enumerate(split.hot) if i not in split.gpu_layers)


def test_sizes():
    assert parse_size("6GiB") == 6 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size("1.5GB") == 1_500_000_000 and parse_size("0") == 0
    with pytest.raises(HybridInferError, match="6GiB"):
        parse_size("lots")


def test_split_cli_json_and_powerinfer_export(relu_engine, tmp_path):
    profile = profile_activations(relu_engine, [[1, 5, 6, 7, 8, 9, 10, 200, 201]])
    save_profile(profile, tmp_path / "a.gguf")
    memory = memory_model(relu_engine.file, relu_engine.config, 64, "cpu")
    budget = memory.workspace + sum(memory.layer) + memory.output + 100 * memory.neuron[0]
    result = CliRunner().invoke(cli, ["split", "-m", relu_engine.path, "--activations", str(tmp_path / "a.gguf"),
                                      "--vram-budget", str(budget), "-c", "64", "--device", "cpu", "--group", "16",
                                      "-o", str(tmp_path / "s.gguf"), "--powerinfer-gpuidx", str(tmp_path / "g"),
                                      "--plot", str(tmp_path / "p.png"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["hot_neurons"] == 96 and report["gpu_bytes"] <= budget  # six groups of 16 fit in 100 neurons
    assert report["gpu_layers"] == [0, 1] and report["output_on_gpu"]
    assert all(layer["attention_on_gpu"] for layer in report["layers"])
    assert 0 < report["gpu_share"] < 1
    exported = GGUFFile(tmp_path / "g")
    assert exported.is_powerinfer and exported.architecture == "generic.gpu_index"
    names = list(exported.tensors)
    assert names == ["blk.0.gpu_idx", "blk.0.gpu_bucket", "blk.1.gpu_idx", "blk.1.gpu_bucket"]
    assert (tmp_path / "p.png").exists()
