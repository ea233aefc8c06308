"""CATS for SiLU models: calibrated thresholds (`sparsity/`), the sparsity file, the packed CATS path against the
reference twin, the fingerprint refusal, the dense fallback, and the `sparsify` / `perplexity` commands."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.runtime.activations import run_observed
from hybridinfer.runtime.parts import DenseFFN
from hybridinfer.sparsity.calibrate import calibrate_thresholds
from hybridinfer.sparsity.thresholds import load_thresholds
from logit_checks import (F32_CACHE, IDS, N_FF, assert_refused_by_another_model, calibration_chunks, decode_logits,
                         relative_error, write_sparsity_file)
from tiny_models import random_weights, write_tiny_gguf

TARGET = 0.5


@pytest.fixture(scope="module")
def sparsity_file(silu_model, tmp_path_factory):
    return write_sparsity_file(silu_model, tmp_path_factory.mktemp("s") / "silu.sparsity.gguf", TARGET, "cats")


def test_thresholds_are_the_quantiles_of_the_activation_magnitudes(silu_model):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    magnitudes = [[] for _ in range(engine.config.n_layer)]
    run_observed(engine, calibration_chunks(), lambda i, r, a: magnitudes[i].append(a.abs().numpy().ravel()))
    result = calibrate_thresholds(engine, calibration_chunks(), 0.4)
    for layer, values in enumerate(magnitudes):
        values = np.concatenate(values)
        exact = np.quantile(values, 0.4)
        assert abs(result.thresholds[layer] - exact) <= 3e-3 * exact
        assert abs((values < result.thresholds[layer]).mean() - 0.4) < 2e-3
    assert np.allclose(result.calibration_sparsity, 0.4, atol=1e-3)
    assert result.n_tokens == sum(map(len, calibration_chunks()))


def test_the_file_round_trips(sparsity_file, silu_model):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    loaded = load_thresholds(sparsity_file, engine.fingerprint)
    assert loaded.method == "cats" and loaded.target == TARGET and loaded.thresholds.shape == (2, 1)
    assert np.all(loaded.thresholds > 0)


def test_packed_cats_equals_the_reference_twin(silu_model, sparsity_file):
    reference = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(sparsity_file))
    expected = decode_logits(reference, IDS)
    packed = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(sparsity_file), **F32_CACHE)
    decoded = decode_logits(packed, IDS)  # one token at a time: the numba CATS block
    assert relative_error(decoded, expected) < 1e-4
    assert relative_error(packed.logits(IDS), expected) < 1e-4  # the prompt path (several tokens)
    dense = hybridinfer.load(str(silu_model), backend="reference").logits(IDS)
    assert relative_error(expected, dense) > 1e-3  # the thresholds really changed the result
    stats = packed.sparse_ffn.stats
    assert stats.rows == stats.tokens * N_FF  # every gate row is read
    assert abs(stats.sparsity(N_FF) - TARGET) < 0.15
    assert abs(reference.sparse_ffn.stats.sparsity(N_FF) - TARGET) < 0.15


def test_a_quantization_of_the_model_takes_its_file_with_int8_activations(sparsity_file, tmp_path):
    q8 = write_tiny_gguf(tmp_path / "silu-q8_0.gguf", random_weights(seed=5, n_ff=N_FF), weight_type=T.Q8_0)
    packed = hybridinfer.load(str(q8), sparsity_file=str(sparsity_file))
    reference = hybridinfer.load(str(q8), backend="reference", sparsity_file=str(sparsity_file))
    assert relative_error(decode_logits(packed, IDS), reference.logits(IDS)) < 0.1
    out = packed.generate(IDS, max_tokens=4, temperature=0)
    assert len(out.tokens) == 4


def test_a_silu_model_without_a_sparsity_file_runs_dense(silu_model):
    engine = hybridinfer.load(str(silu_model))
    assert all(isinstance(ffn, DenseFFN) for _, ffn in engine.model.layers) and engine.sparse_ffn is None
    expected = hybridinfer.load(str(silu_model), backend="reference", float_activations=True).logits(IDS)
    packed = hybridinfer.load(str(silu_model), float_activations=True, **F32_CACHE)
    assert relative_error(packed.logits(IDS), expected) < 1e-4


def test_a_sparsity_file_for_another_model_is_refused(sparsity_file, tmp_path):
    assert_refused_by_another_model(sparsity_file, tmp_path)
    wider = write_tiny_gguf(tmp_path / "wider.gguf", random_weights(seed=5, n_ff=N_FF + 32))
    with pytest.raises(hybridinfer.HybridInferError, match="shape"):
        hybridinfer.load(str(wider), sparsity_file=str(sparsity_file))


def test_a_sparsity_file_excludes_the_other_sparse_modes(silu_model, sparsity_file):
    with pytest.raises(hybridinfer.HybridInferError, match="drop --exact"):
        hybridinfer.load(str(silu_model), sparsity_file=str(sparsity_file), exact=True)
    with pytest.raises(hybridinfer.HybridInferError, match="not a sparsity file"):
        hybridinfer.load(str(silu_model), sparsity_file=str(silu_model))


def test_calibration_refuses_relu_models_and_bad_targets(tmp_path, silu_model):
    relu = write_tiny_gguf(tmp_path / "relu.gguf", random_weights(seed=5, n_ff=N_FF), activation="relu")
    with pytest.raises(hybridinfer.HybridInferError, match="SiLU"):
        calibrate_thresholds(hybridinfer.load(str(relu), n_ctx=64), calibration_chunks(), 0.4)
    with pytest.raises(hybridinfer.HybridInferError, match="between 0 and 1"):
        calibrate_thresholds(hybridinfer.load(str(silu_model), n_ctx=64), calibration_chunks(), 1.0)


def test_sparsify_and_perplexity_commands(silu_model, texts, tmp_path):
    calibration, held_out = texts
    out = tmp_path / "m.sparsity.gguf"
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(silu_model), "--corpus", str(calibration), "--tokens", "600",
                                      "--chunk", "64", "--held-out", str(held_out), "--held-out-tokens", "300",
                                      "--sparsity", "0.4", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and len(summary["layers"]) == 2
    assert abs(summary["held_out_sparsity"] - 0.4) < 0.05  # measured on other text than the calibration's
    assert out.exists()
    result = CliRunner().invoke(cli, ["perplexity", "-m", str(silu_model), "-f", str(held_out), "-c", "64",
                                      "--chunks", "2", "--sparsity-file", str(out), "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert abs(scored["sparsity"] - 0.4) < 0.1 and scored["kl_to_dense"] > 0
    assert scored["dense_perplexity"] > 0 and scored["perplexity"] > 0
    text = CliRunner().invoke(cli, ["perplexity", "-m", str(silu_model), "-f", str(held_out), "-c", "64",
                                    "--chunks", "1", "--sparsity-file", str(out)])
    assert text.exit_code == 0 and "FFN sparsity" in text.stdout


@pytest.mark.parametrize("flags, message", [
    (["--sparsity", "1.5"], "between 0 and 1"),
    (["--sparsity", "0.4", "--method", "deja-vu"], "--method"),
])
def test_sparsify_bad_input_is_one_line_and_writes_nothing(silu_model, texts, tmp_path, flags, message):
    out = tmp_path / "x.sparsity.gguf"
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(silu_model), "--corpus", str(texts[0]), "--tokens", "100",
                                      "-o", str(out), *flags])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_sparsify_refuses_a_relu_model(tmp_path, texts):
    relu = write_tiny_gguf(tmp_path / "relu.gguf", random_weights(seed=5, n_ff=N_FF), activation="relu")
    out = tmp_path / "r.sparsity.gguf"
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(relu), "--corpus", str(texts[0]), "--tokens", "100",
                                      "--sparsity", "0.4", "-o", str(out)])
    assert result.exit_code == 1 and "SiLU" in result.output and not out.exists()
    result = CliRunner().invoke(cli, ["generate", "-m", str(relu), "-p", "the", "-n", "1", "--sparsity-file",
                                      str(out)])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


def test_observers_see_silu_activations(silu_model):
    """The calibration reads SiLU(gate) from the packed decoder's observers, as the reference computes it."""
    seen = {}
    packed = hybridinfer.load(str(silu_model), float_activations=True, n_ctx=64, **F32_CACHE)
    reference = hybridinfer.load(str(silu_model), backend="reference", n_ctx=64)
    for name, engine in (("packed", packed), ("reference", reference)):
        run_observed(engine, [IDS], lambda i, r, a, name=name: seen.setdefault((name, i), a.clone()))
    for i in range(2):
        torch.testing.assert_close(seen[("packed", i)], seen[("reference", i)], rtol=1e-4, atol=1e-5)


def test_the_silu_variant_tool_keeps_the_tensors(tmp_path):
    """tools/silu_variant.py, which makes the 7B-shaped benchmark model's SiLU variant."""
    from tools.silu_variant import write_silu_variant
    relu = write_tiny_gguf(tmp_path / "relu.gguf", random_weights(seed=5, n_ff=N_FF), activation="relu",
                           weight_type=T.Q8_0)
    write_silu_variant(str(relu), str(tmp_path / "silu.gguf"))
    a, b = hybridinfer.load(str(relu)), hybridinfer.load(str(tmp_path / "silu.gguf"))
    assert (a.config.activation, b.config.activation) == ("relu", "silu")
    for name in ("blk.0.ffn_gate.weight", "blk.1.ffn_down.weight", "token_embd.weight"):
        assert np.array_equal(a.file.tensor(name).raw, b.file.tensor(name).raw)


def test_sparsify_writes_beside_the_model_and_sparsity_finds_it(silu_model, texts, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(silu_model.read_bytes())
    result = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--corpus", str(texts[0]), "--tokens", "300",
                                      "--chunk", "64", "--held-out-tokens", "0", "--sparsity", "0.4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.cats-40.sparsity.gguf").exists() and "--sparsity 0.4" in result.stdout
    engine = hybridinfer.load(str(model), sparsity=0.4)
    assert engine.mode == "cats 40%" and engine.sparse_ffn is not None
    for options, message in (({"sparsity": 0.25}, "sparsify -m"),
                             ({"sparsity": 0.4, "sparsity_file": str(model)}, "exclude each other")):
        with pytest.raises(hybridinfer.HybridInferError, match=message):
            hybridinfer.load(str(model), **options)
    result = CliRunner().invoke(cli, ["generate", "-m", str(model), "-p", "the", "-n", "2", "--sparsity", "0.25"])
    assert result.exit_code == 1 and "cats-25.sparsity.gguf" in result.output and "Traceback" not in result.output
