"""CHESS (CATS with per-neuron scales, `sparsity/chess.py`): the scales against a float64 numpy computation from the
file's weights (gguf-py's dequantization) and the observed residuals, and against the weights and activations they
come from, the calibrated criterion's quantiles, the file, the packed path against its reference twin (one token
and a prompt), and the CLI."""


import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.runtime.activations import run_observed
from hybridinfer.sparsity.calibrate import calibrate_thresholds
from hybridinfer.sparsity.chess import neuron_scales
from hybridinfer.sparsity.thresholds import load_thresholds, neuron_scale_name
from logit_checks import (F32_CACHE, IDS, N_FF, assert_refused_by_another_model, calibration_chunks, decode_logits,
                         relative_error, sparsify_beside_the_model, write_sparsity_file)
from tiny_models import random_weights, write_tiny_gguf

TARGET = 0.4


@pytest.fixture(scope="module")
def chess_file(silu_model, tmp_path_factory):
    return write_sparsity_file(silu_model, tmp_path_factory.mktemp("s") / "silu.chess.sparsity.gguf", TARGET, "chess")


@pytest.fixture(scope="module")
def q4_1_up_model(tmp_path_factory):
    """The SiLU model's weights with the up projections in Q4_1: the scales see the file's dequantized numbers."""
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "q4_1_up.gguf", random_weights(seed=5, n_ff=N_FF),
                           types={"ffn_up.weight": T.Q4_1})


def float64_scales(model, engine) -> list[np.ndarray]:
    """Per layer, s_i = mean over calibration_chunks() of |up_i . rms_norm(x)| in float64 numpy, x the residuals
    `engine` observes, the weights read and dequantized by gguf-py."""
    tensors = {t.name: t for t in gguf.GGUFReader(str(model)).tensors}
    residuals = [[] for _ in range(engine.config.n_layer)]
    run_observed(engine, calibration_chunks(), lambda index, residual, _: residuals[index].append(residual.numpy()))
    scales = []
    for i, seen in enumerate(residuals):
        x = np.concatenate(seen).astype(np.float64)  # (tokens, n_embd)
        up = tensors[f"blk.{i}.ffn_up.weight"]
        up = gguf.quants.dequantize(up.data, up.tensor_type).astype(np.float64)  # (n_ff, n_embd)
        norm = np.asarray(tensors[f"blk.{i}.ffn_norm.weight"].data, np.float64)
        normed = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + engine.config.rms_eps) * norm
        scales.append(np.abs(normed @ up.T).mean(axis=0))
    return scales


@pytest.mark.parametrize("backend,block_elements", [("packed", None), ("reference", None), ("packed", 100 * 64)],
                         ids=["packed", "reference", "blocks-of-100-rows"])
def test_scales_equal_a_float64_computation_from_the_file(q4_1_up_model, backend, block_elements):
    """In one block of up rows per layer (the default at this size) or in blocks of 100 of the 256 rows."""
    engine = hybridinfer.load(str(q4_1_up_model), n_ctx=64, backend=backend, float_activations=True)
    blocks = {} if block_elements is None else {"block_elements": block_elements}
    scales = neuron_scales(engine, calibration_chunks(), **blocks)
    for found, expected in zip(scales, float64_scales(q4_1_up_model, engine)):
        assert found.shape == (N_FF,) and found.dtype == np.float32
        np.testing.assert_allclose(found, expected, rtol=1e-5)


def observed_products(engine) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, over calibration_chunks() through the reference model: (|act(gate)|, |up . normed x|), each
    (tokens, n_ff)."""
    seen = [([], []) for _ in range(engine.config.n_layer)]
    layers = engine.model.weights.layers

    def observe(index, residual, activation):
        normed = torch.nn.functional.rms_norm(residual, (residual.shape[-1],), layers[index].ffn_norm,
                                              engine.config.rms_eps)
        seen[index][0].append(activation.abs().numpy())
        seen[index][1].append((normed @ layers[index].ffn_up.T).abs().numpy())

    run_observed(engine, calibration_chunks(), observe)
    return [(np.concatenate(a), np.concatenate(u)) for a, u in seen]


def test_scales_are_the_mean_up_magnitudes(silu_model):
    engine = hybridinfer.load(str(silu_model), n_ctx=64, backend="reference")
    scales = neuron_scales(engine, calibration_chunks())
    for found, (_, up) in zip(scales, observed_products(engine)):
        expected = up.mean(axis=0)
        assert found.shape == (N_FF,) and found.dtype == np.float32
        np.testing.assert_allclose(found, expected, rtol=1e-4)
        assert np.ptp(found) > 0.1 * found.mean()  # the scales differ between neurons: not CATS


@pytest.mark.parametrize("backend", ["packed", "reference"])
def test_chess_thresholds_are_quantiles_of_the_scaled_activations(silu_model, backend):
    engine = hybridinfer.load(str(silu_model), n_ctx=64, backend=backend)
    result = calibrate_thresholds(engine, calibration_chunks(), TARGET, "chess")
    reference = hybridinfer.load(str(silu_model), n_ctx=64, backend="reference")
    for layer, (act, _) in enumerate(observed_products(reference)):
        exact = np.quantile(act * result.neuron_scales[layer], TARGET)
        assert abs(result.thresholds[layer, 0] - exact) <= 3e-3 * exact
    assert np.allclose(result.calibration_sparsity, TARGET, atol=2e-3)
    assert result.column_norms is None and len(result.neuron_scales) == engine.config.n_layer


def test_the_chess_file_round_trips_its_scales_and_is_refused_by_another_model(chess_file, silu_model, tmp_path):
    engine = hybridinfer.load(str(silu_model), n_ctx=64)
    loaded = load_thresholds(chess_file, engine.fingerprint)
    assert loaded.method == "chess" and not loaded.zeroes_inputs and loaded.thresholds.shape == (2, 1)
    for stored, computed in zip(loaded.neuron_scales, neuron_scales(engine, calibration_chunks())):
        np.testing.assert_allclose(stored, computed, rtol=1e-5)
    assert neuron_scale_name(1) == "blk.1.ffn_activation_neuron_scale"
    assert_refused_by_another_model(chess_file, tmp_path)


def test_packed_chess_equals_the_reference_twin_and_differs_from_cats(silu_model, chess_file):
    reference = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(chess_file))
    expected = decode_logits(reference, IDS)
    packed = hybridinfer.load(str(silu_model), float_activations=True, sparsity_file=str(chess_file), **F32_CACHE)
    assert packed.mode == "chess 40%"
    assert relative_error(decode_logits(packed, IDS), expected) < 1e-4  # one token: the numba block
    assert relative_error(packed.logits(IDS), expected) < 1e-4  # a prompt (several tokens)
    n_ff = packed.config.n_ff
    assert packed.sparse_ffn.stats.sparsity(n_ff) == pytest.approx(reference.sparse_ffn.stats.sparsity(n_ff), abs=0.01)
    assert 0.2 < reference.sparse_ffn.stats.sparsity(n_ff) < 0.6
    cats = write_sparsity_file(silu_model, chess_file.parent / "silu.cats.sparsity.gguf", TARGET, "cats")
    cats_logits = hybridinfer.load(str(silu_model), backend="reference", sparsity_file=str(cats)).logits(IDS)
    assert relative_error(cats_logits, expected) > 1e-3  # not CATS's choice of neurons


def test_sparsify_chess_and_the_file_beside_the_model(silu_model, texts, tmp_path):
    calibration, held_out = texts
    model, summary = sparsify_beside_the_model(silu_model, texts, tmp_path, "chess")
    assert summary["output"] == str(tmp_path / "model.chess-40.sparsity.gguf") and summary["method"] == "chess"
    assert abs(summary["held_out_sparsity"] - 0.4) < 0.15 and isinstance(summary["layers"][0]["threshold"], float)
    text = CliRunner().invoke(cli, ["perplexity", "-m", str(model), "-f", str(held_out), "-c", "64", "--chunks", "1",
                                    "--sparsity", "0.4", "--sparsity-method", "chess"])
    assert text.exit_code == 0 and "sparsity" in text.stdout, text.output
    for extra, message in ((["--allocation", "greedy"], "allocation greedy"), (["--sparsity", "1.5"], "between 0")):
        refused = CliRunner().invoke(cli, ["sparsify", "-m", str(model), "--method", "chess", "--corpus",
                                           str(calibration), "--tokens", "100", "--sparsity", "0.4", *extra])
        assert refused.exit_code == 1 and message in refused.output and "Traceback" not in refused.output


def test_a_chess_file_without_its_scales_is_a_one_line_error(silu_model, chess_file, tmp_path):
    """A CHESS file whose scale tensors are missing (written as CATS's, its method then changed) is refused with the
    command that makes it again."""
    import gguf
    from hybridinfer.sparsity.thresholds import save_thresholds
    loaded = load_thresholds(chess_file)
    loaded.neuron_scales = None
    broken = tmp_path / "broken.sparsity.gguf"
    save_thresholds(loaded, broken)
    assert gguf.GGUFReader(str(broken)).tensors == []
    with pytest.raises(hybridinfer.HybridInferError, match="sparsify --method chess"):
        hybridinfer.load(str(silu_model), sparsity_file=str(broken))
