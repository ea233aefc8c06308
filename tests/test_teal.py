"""TEAL for SiLU models: per-site input thresholds (`sparsity/`), the column-sparse kernels against their twins, the
packed TEAL path against the reference backend's, and the `sparsify --method teal` / `--sparsity-method` flags."""

import json

import numba
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.kernels import cpu_ops, reference
from hybridinfer.kernels.block_args import NONE
from hybridinfer.kernels.packed import pack
from hybridinfer.model_file.weight_formats import CPU_NATIVE_FORMATS
from hybridinfer.runtime.weights import transposed_rows
from hybridinfer.sparsity.calibrate import calibrate_thresholds, measure_sparsity, observe_sites
from hybridinfer.sparsity.thresholds import SITES, load_thresholds
from logit_checks import (F32_CACHE, IDS, N_FF, assert_refused_by_another_model, calibration_chunks, decode_logits,
                         relative_error, sparsify_beside_the_model, write_sparsity_file)
from tiny_models import random_weights, write_tiny_gguf

TARGET = 0.5


@pytest.fixture(scope="module")
def teal_file(silu_model, tmp_path_factory):
    return write_sparsity_file(silu_model, tmp_path_factory.mktemp("s") / "silu.teal.sparsity.gguf", TARGET, "teal")


def test_select_inputs_matches_its_twin():
    rng = np.random.default_rng(11)
    values = rng.standard_normal(300).astype(np.float32)
    selected, coeffs = np.empty(300, np.int64), np.empty(300, np.float32)
    k = cpu_ops.select_inputs(values, np.float32(0.7), NONE, selected, coeffs)
    rows, kept = reference.select_inputs(values, 0.7)
    assert 50 < k < 250 and np.array_equal(selected[:k], rows) and np.array_equal(coeffs[:k], kept)
    zeroed = values.reshape(3, 100).copy()
    assert cpu_ops.zero_below(zeroed, np.float32(0.7), NONE) == 300 - k
    assert np.array_equal(zeroed.reshape(-1), np.where(np.abs(values) >= 0.7, values, 0))


def test_wina_selection_weighs_each_entry_by_its_column_norm_as_its_twin():
    rng = np.random.default_rng(13)
    values = rng.standard_normal(300).astype(np.float32)
    norms = rng.uniform(0.1, 3.0, 100).astype(np.float32)
    scales = np.tile(norms, 3)
    selected, coeffs = np.empty(300, np.int64), np.empty(300, np.float32)
    k = cpu_ops.select_inputs(values, np.float32(0.7), scales, selected, coeffs)
    rows, kept = reference.select_inputs(values, 0.7, scales)
    assert 50 < k < 250 and np.array_equal(selected[:k], rows) and np.array_equal(coeffs[:k], kept)
    assert not np.array_equal(rows, reference.select_inputs(values, 0.7)[0])  # the norms changed the choice
    zeroed = values.reshape(3, 100).copy()
    assert cpu_ops.zero_below(zeroed, np.float32(0.7), norms) == 300 - k
    assert np.array_equal(zeroed.reshape(-1), np.where(np.abs(values) * scales >= 0.7, values, 0))


@pytest.mark.parametrize("qtype", [T.F32] + [f.type for f in CPU_NATIVE_FORMATS if f.quantized and not f.k_quant])
def test_a_column_sparse_product_over_stacked_transposes_matches_its_twin(qtype):
    """The transposed stacked weights (gate/up as one matrix) read only the rows of the inputs that pass."""
    from gguf import quants
    from hybridinfer.kernels.cpu_quant import accumulate_rows
    rng = np.random.default_rng(12)
    gate, up = (rng.standard_normal((64, 96)).astype(np.float32) for _ in range(2))
    packed = [pack((w if qtype == T.F32 else quants.quantize(w, qtype), qtype, w.shape)) for w in (gate, up)]
    stacked = np.concatenate([m.dequantize_rows(np.arange(64)) for m in packed])  # (128, 96)
    weight_t = transposed_rows(*packed)
    assert (weight_t.rows, weight_t.cols, weight_t.qtype) == (96, 128, qtype)
    x = rng.standard_normal(96).astype(np.float32)
    rows, coeffs = reference.select_inputs(x, 0.8)
    out = np.empty(128, np.float32)
    accumulate_rows(weight_t, rows, coeffs, out, float_activations=True)
    expected = reference.teal_matvec(stacked, x, 0.8)
    tolerance = 1e-5 if qtype == T.F32 else 0.02 if qtype == T.Q8_0 else 0.15  # one more rounding: the transpose
    assert relative_error(out, expected) < tolerance


def site_values(engine, thresholds=None) -> dict:
    """{(layer, site): every magnitude seen there} over the calibration chunks (sparsified by `thresholds`)."""
    values = {}
    observe_sites(engine, "teal", calibration_chunks(),
                  lambda i, s, v: values.setdefault((i, s), []).append(np.abs(np.asarray(v)).ravel().copy()),
                  thresholds=thresholds)
    return {key: np.concatenate(seen) for key, seen in values.items()}


@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_teal_thresholds_are_each_sites_quantiles_in_the_model_they_sparsify(silu_model, backend):
    """The first pass reads the dense model's quantiles; the second, those of the model the first pass sparsifies."""
    engine = hybridinfer.load(str(silu_model), n_ctx=64, backend=backend)
    first = calibrate_thresholds(engine, calibration_chunks(), 0.4, "teal", passes=1)
    result = calibrate_thresholds(engine, calibration_chunks(), 0.4, "teal")
    assert result.thresholds.shape == (2, 4) and result.sites == SITES["teal"]
    for passed, observed in [(first, site_values(engine)), (result, site_values(engine, first.thresholds))]:
        assert len(observed) == 8
        for (layer, site), seen in observed.items():
            exact = np.quantile(seen, 0.4)
            assert abs(passed.thresholds[layer, site] - exact) <= 3e-3 * exact
    assert not np.allclose(first.thresholds[1], result.thresholds[1], rtol=1e-3)  # layer 1 sees a sparse layer 0
    assert np.allclose(first.thresholds[0, 0], result.thresholds[0, 0], rtol=3e-3)  # its input is the embedding
    assert np.allclose(result.calibration_sparsity, 0.4, atol=2e-3)
    with pytest.raises(hybridinfer.HybridInferError, match="1 pass"):
        calibrate_thresholds(engine, calibration_chunks(), 0.4, "cats", passes=2)


def test_the_teal_file_round_trips_and_is_refused_by_another_model(teal_file, silu_model, tmp_path):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    loaded = load_thresholds(teal_file, engine.fingerprint)
    assert loaded.method == "teal" and loaded.thresholds.shape == (2, 4) and np.all(loaded.thresholds > 0)
    assert_refused_by_another_model(teal_file, tmp_path)


def test_packed_teal_equals_the_reference_twin(silu_model, teal_file):
    reference_engine = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(teal_file))
    expected = decode_logits(reference_engine, IDS)
    packed = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(teal_file), **F32_CACHE)
    assert packed.mode == "teal 50%"
    decoded = decode_logits(packed, IDS)  # one token at a time: the transposed column-sparse blocks
    assert relative_error(decoded, expected) < 1e-4
    assert relative_error(packed.logits(IDS), expected) < 1e-4  # the prompt path (masked dense products)
    dense = hybridinfer.load(str(silu_model), backend="reference").logits(IDS)
    assert relative_error(expected, dense) > 1e-3  # the thresholds really changed the result
    # each site zeroes what calibration measures over the same tokens (ten: a short text's attention outputs are
    # not held-out text's, so the share itself may stray from the target)
    measured = measure_sparsity(hybridinfer.load(str(silu_model)), [IDS], load_thresholds(teal_file)).mean(axis=0)
    assert np.all(np.abs(measured - TARGET) < 0.2)
    for engine in (packed, reference_engine):
        stats = engine.sparse_ffn.stats
        assert np.allclose(stats.site_sparsity(), measured, atol=0.01)
        assert abs(stats.sparsity() - TARGET) < 0.15
    with packed.every_neuron():  # the dense model, then TEAL again
        assert relative_error(packed.logits(IDS), dense) < 1e-4
    assert relative_error(packed.logits(IDS), expected) < 1e-4


def test_teal_with_a_quantized_model_and_int8_activations(teal_file, tmp_path):
    q8 = write_tiny_gguf(tmp_path / "silu-q8_0.gguf", random_weights(seed=5, n_ff=N_FF), weight_type=T.Q8_0)
    packed = hybridinfer.load(str(q8), sparsity_file=str(teal_file))
    reference_engine = hybridinfer.load(str(q8), backend="reference", sparsity_file=str(teal_file))
    expected = reference_engine.logits(IDS)
    # int8 activations and the re-quantized transposes move some entries across their thresholds (at 50% at every
    # site, many sit near one): further from the float oracle than the dense path is, but far closer than dense
    assert relative_error(decode_logits(packed, IDS), expected) < 0.2
    assert relative_error(hybridinfer.load(str(q8), backend="reference").logits(IDS), expected) > 0.3
    again = hybridinfer.load(str(q8), sparsity_file=str(teal_file))  # the transposes, mapped from the repack cache
    assert again.startup["weights_from_cache"]
    assert np.array_equal(decode_logits(again, IDS[:4]), decode_logits(packed, IDS[:4]))
    assert len(packed.generate(IDS, max_tokens=4, temperature=0).tokens) == 4


def test_teal_runs_with_one_thread(silu_model, teal_file):
    before = numba.get_num_threads()
    try:
        one = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(teal_file), n_threads=1)
        single = decode_logits(one, IDS[:5])
    finally:
        numba.set_num_threads(before)
    many = decode_logits(hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(teal_file)),
                         IDS[:5])
    assert relative_error(single, many) < 1e-5


def test_sparsify_teal_and_the_files_beside_the_model(silu_model, texts, tmp_path):
    calibration, held_out = texts
    model, summary = sparsify_beside_the_model(silu_model, texts, tmp_path, "teal")
    assert summary["output"] == str(tmp_path / "model.teal-40.sparsity.gguf") and summary["method"] == "teal"
    assert set(summary["layers"][0]["threshold"]) == set(SITES["teal"])
    assert abs(summary["held_out_sparsity"] - 0.4) < 0.05
    table = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--method", "teal", "--corpus", str(calibration),
                                     "--tokens", "300", "--chunk", "64", "--held-out-tokens", "0",
                                     "--sparsity", "0.25"])
    assert table.exit_code == 0 and "gate/up" in table.stdout and "--sparsity-method teal" in table.stdout
    result = CliRunner().invoke(cli, ["perplexity", "-m", str(model), "-f", str(held_out), "-c", "64", "--chunks",
                                      "2", "--sparsity", "0.4", "--sparsity-method", "teal", "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert abs(scored["sparsity"] - 0.4) < 0.1 and scored["kl_to_dense"] > 0
    text = CliRunner().invoke(cli, ["perplexity", "-m", str(model), "-f", str(held_out), "-c", "64", "--chunks", "1",
                                    "--sparsity", "0.4", "--sparsity-method", "teal"])
    assert text.exit_code == 0 and "TEAL sparsity" in text.stdout
    result = CliRunner().invoke(cli, ["generate", "-m", str(model), "-p", "the", "-n", "2", "--sparsity", "0.5",
                                      "--sparsity-method", "teal"])
    assert result.exit_code == 1 and "teal-50.sparsity.gguf" in result.output and "--method teal" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["generate", "-m", str(model), "-p", "the", "-n", "2", "--sparsity-method",
                                      "teal"])
    assert result.exit_code == 1 and "give --sparsity" in result.output
    assert hybridinfer.load(str(model), sparsity=0.4, sparsity_method="teal").mode == "teal 40%"


def test_the_memory_estimate_counts_teals_transposes(silu_model):
    from hybridinfer.model_file.config import ModelConfig
    from hybridinfer.model_file.gguf_file import GGUFFile
    from hybridinfer.runtime.memory_estimate import estimate, require_fits
    file = GGUFFile(silu_model)
    config = ModelConfig.from_gguf(file)
    dense, teal = estimate(file, config, 64, 64, False), estimate(file, config, 64, 64, False, transposed=True)
    projections = [t for name, t in file.tensors.items() if name.startswith("blk.") and "norm" not in name]
    assert len(projections) == 2 * 7 and dense.transposes == 0
    assert teal.transposes == sum(t.n_bytes for t in projections) and teal.total == dense.total + teal.transposes
    require_fits(dense, config, 64, available=dense.total)
    with pytest.raises(hybridinfer.HybridInferError, match="their TEAL transposes"):
        require_fits(teal, config, 64, available=dense.total)
