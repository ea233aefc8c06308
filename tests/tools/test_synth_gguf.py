"""The model `make gpu-check` synthesizes straight into GGUF: valid Q4_0 blocks, ProSparse-like sparsity, and
predictors that find the neurons that fire."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

import hybridinfer
from hybridinfer.runtime.activations import profile_activations
from hybridinfer.hybrid.activations_file import load_profile
from tools.synth_gguf import firing_probabilities, quantize_q4_0, synthesize


def test_q4_0_blocks_are_what_gguf_writes():
    values = np.random.default_rng(11).standard_normal((37, 256)).astype(np.float32)
    values[3] = 0  # an all-zero row: d = 0
    ours = quantize_q4_0(torch.from_numpy(values))
    assert ours.shape == (37, 256 // 32 * 18)
    np.testing.assert_array_equal(quants.dequantize(ours, T.Q4_0), quants.dequantize(quants.quantize(values, T.Q4_0),
                                                                                     T.Q4_0))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("s") / "tiny", "tiny", progress=lambda message: None)


def test_synthetic_model_is_sparse_where_its_activations_file_says(synthetic):
    model, predictors, activations = synthetic
    engine = hybridinfer.load(str(model), n_ctx=128)
    ids = list(np.random.default_rng(4).integers(3, engine.config.n_vocab, 96))
    measured = profile_activations(engine, [ids]).frequency
    expected = load_profile(str(activations), engine.fingerprint).frequency
    assert np.allclose(expected, firing_probabilities(2, engine.config.n_ff, 0), atol=1e-5)
    assert 0.05 < measured[0].mean() < 0.25  # about 1/9 fire
    hot = np.argsort(-expected[0])[: engine.config.n_ff // 5]
    assert measured[0][hot].sum() / measured[0].sum() > 0.4  # the hot neurons are the ones the file names


def test_synthetic_predictors_find_the_active_neurons(synthetic):
    model, predictors, _ = synthetic
    exact = hybridinfer.load(str(model), n_ctx=128, exact=True, float_activations=True)
    predicted = hybridinfer.load(str(model), n_ctx=128, predictors=str(predictors), float_activations=True)
    ids = [1] + list(np.random.default_rng(5).integers(3, exact.config.n_vocab, 24))
    for engine in (exact, predicted):
        engine.generate(ids, max_tokens=8, temperature=0)
    read = predicted.sparse_ffn.stats.rows / predicted.sparse_ffn.stats.tokens / exact.config.n_ff
    recall = predicted.sparse_ffn.stats.active / exact.sparse_ffn.stats.active
    assert read < 0.5 and recall > 0.8
