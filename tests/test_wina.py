"""WINA (weight-informed input sparsity) and TEAL's greedy per-site allocation: the column norms against the
weights, the calibrated criterion's quantiles, the file, the packed path against its reference twin, the CLI, and
the greedy allocation's model-wide target."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.reference.sparse_inputs import site_weights, site_widths
from hybridinfer.sparsity.calibrate import calibrate_thresholds, measure_sparsity, observe_sites
from hybridinfer.sparsity.greedy import allocate
from hybridinfer.sparsity.thresholds import load_thresholds, save_thresholds
from hybridinfer.sparsity.wina import column_norms
from logit_checks import (F32_CACHE, IDS, assert_refused_by_another_model, calibration_chunks, decode_logits,
                         relative_error, write_sparsity_file)

TARGET = 0.4


@pytest.fixture(scope="module")
def wina_file(silu_model, tmp_path_factory):
    return write_sparsity_file(silu_model, tmp_path_factory.mktemp("s") / "silu.wina.sparsity.gguf", TARGET, "wina")


def test_column_norms_are_those_of_the_weights_each_site_multiplies(silu_model):
    engine = hybridinfer.load(str(silu_model), n_ctx=64, backend="reference")
    norms = column_norms(engine.file, engine.config)
    for layer, found in zip(engine.model.weights.layers, norms):
        qkv = torch.cat([layer.attn_q, layer.attn_k, layer.attn_v])
        gate_up = torch.cat([layer.ffn_gate, layer.ffn_up])
        expected = [w.norm(dim=0).numpy() for w in (qkv, layer.attn_output, gate_up, layer.ffn_down)]
        assert [n.shape[0] for n in found] == list(site_widths(engine.config))
        for n, e in zip(found, expected):
            assert np.allclose(n, e, rtol=1e-5) and np.ptp(n) > 0.05 * n.mean()


@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_wina_thresholds_are_quantiles_of_the_weighted_magnitudes(silu_model, backend):
    engine = hybridinfer.load(str(silu_model), n_ctx=64, backend=backend)
    result = calibrate_thresholds(engine, calibration_chunks(), TARGET, "wina", passes=1)
    norms = column_norms(engine.file, engine.config)
    seen = {}
    observe_sites(engine, "wina", calibration_chunks(),
                  lambda i, s, v: seen.setdefault((i, s), []).append((np.abs(v) * norms[i][s]).ravel().copy()))
    for (layer, site), values in seen.items():
        exact = np.quantile(np.concatenate(values), TARGET)
        assert abs(result.thresholds[layer, site] - exact) <= 3e-3 * exact
    assert np.allclose(result.calibration_sparsity, TARGET, atol=2e-3)


def test_the_wina_file_round_trips_its_norms_and_is_refused_by_another_model(wina_file, silu_model, tmp_path):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    loaded = load_thresholds(wina_file, engine.fingerprint)
    assert loaded.method == "wina" and loaded.allocation == "uniform" and loaded.zeroes_inputs
    for stored, computed in zip(loaded.column_norms, column_norms(engine.file, engine.config)):
        assert all(np.array_equal(a, b) for a, b in zip(stored, computed))
    assert_refused_by_another_model(wina_file, tmp_path)


def test_packed_wina_equals_the_reference_twin_and_zeroes_what_its_thresholds_say(silu_model, wina_file):
    reference_engine = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(wina_file))
    expected = decode_logits(reference_engine, IDS)
    packed = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(wina_file), **F32_CACHE)
    assert packed.mode == "wina 40%"
    assert relative_error(decode_logits(packed, IDS), expected) < 1e-4  # one token: the column-sparse blocks
    measured = measure_sparsity(hybridinfer.load(str(silu_model)), [IDS], load_thresholds(wina_file)).mean(axis=0)
    for engine in (packed, reference_engine):
        assert np.allclose(engine.sparse_ffn.stats.site_sparsity(), measured, atol=0.01)
    assert relative_error(packed.logits(IDS), expected) < 1e-4  # a prompt: masked dense products
    teal = write_sparsity_file(silu_model, wina_file.parent / "silu.teal.sparsity.gguf", TARGET, "teal")
    teal_logits = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(teal)).logits(IDS)
    assert relative_error(teal_logits, expected) > 1e-3  # not TEAL's choice of entries


def test_greedy_allocation_reaches_the_target_share_of_weights_by_the_cheapest_sites():
    """Two sites of equal size: one whose small entries carry little of its output (its energy sits in a few large
    ones), one whose entries all matter alike; the first is made sparser, and the weighted mean is the target."""
    bins = 100
    counts = np.ones((1, 2, bins))
    energies = np.stack([np.r_[np.full(bins - 5, 1e-3), np.full(5, 10.0)], np.ones(bins)])[None]
    levels = allocate(counts, energies, np.array([1.0, 1.0]), 0.5)
    assert levels[0, 0] > 0.85 and levels[0, 1] < 0.15
    assert abs(levels.mean() - 0.5) <= 0.01


@pytest.mark.parametrize("method", ["teal", "wina"])
def test_greedy_calibration_hits_the_model_wide_target_with_levels_that_differ(silu_model, tmp_path, method):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    result = calibrate_thresholds(engine, calibration_chunks(), TARGET, method, allocation="greedy")
    sizes = site_weights(engine.config) * site_widths(engine.config)
    model_wide = float((result.calibration_sparsity * sizes).sum() / (sizes.sum() * engine.config.n_layer))
    assert abs(model_wide - TARGET) < 0.02
    assert np.ptp(result.calibration_sparsity) > 0.1  # not one uniform level
    path = tmp_path / f"{method}.greedy.sparsity.gguf"
    save_thresholds(result, path)
    assert load_thresholds(path).allocation == "greedy"
    sparse = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(path), **F32_CACHE)
    expected = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(path)).logits(IDS)
    assert relative_error(decode_logits(sparse, IDS), expected) < 1e-4
    with pytest.raises(hybridinfer.HybridInferError, match="allocation greedy"):
        calibrate_thresholds(engine, calibration_chunks(), TARGET, "cats", allocation="greedy")


def test_sparsify_wina_greedy_and_the_file_beside_the_model(silu_model, texts, tmp_path):
    calibration, held_out = texts
    model = tmp_path / "model.gguf"
    model.write_bytes(silu_model.read_bytes())
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--method", "wina", "--allocation", "greedy",
                                      "--corpus", str(calibration), "--tokens", "600", "--chunk", "64", "--held-out",
                                      str(held_out), "--held-out-tokens", "300", "--sparsity", "0.4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(tmp_path / "model.wina-40.sparsity.gguf")
    assert summary["method"] == "wina" and summary["allocation"] == "greedy"
    text = CliRunner().invoke(cli, ["perplexity", "-m", str(model), "-f", str(held_out), "-c", "64", "--chunks", "1",
                                    "--sparsity", "0.4", "--sparsity-method", "wina"])
    assert text.exit_code == 0 and "WINA sparsity" in text.stdout, text.output
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--method", "cats", "--allocation", "greedy",
                                      "--corpus", str(calibration), "--tokens", "100", "--sparsity", "0.4"])
    assert result.exit_code == 1 and "allocation greedy" in result.output and "Traceback" not in result.output
