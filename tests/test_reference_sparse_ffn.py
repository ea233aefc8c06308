"""Sparse FFN modes in the engine: --exact and an oracle predictor equal the dense model."""

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.reference.model import ffn_activation
from hybridinfer.reference.sparse_ffn import PredictedSparseFFN
from logit_checks import decode_logits, relative_error
from tiny_models import random_weights, write_tiny_gguf


IDS = [1, 100, 200, 17, 270, 5, 66, 9]


def test_exact_mode_equals_dense(relu_model):
    dense = hybridinfer.load(str(relu_model), backend="reference")
    exact = hybridinfer.load(str(relu_model), exact=True, backend="reference")
    expected = dense.logits(IDS)
    assert relative_error(decode_logits(exact, IDS), expected) < 1e-5
    assert relative_error(exact.logits(IDS), expected) < 1e-5
    stats = exact.sparse_ffn.stats
    assert 0 < stats.active < stats.rows  # really sparse: some neurons were skipped


class OraclePredictor:
    """Predicts exactly the neurons that will fire (the true activation mask), plus optional extras."""

    def __init__(self, engine, extra=0.0):
        self.engine, self.extra = engine, extra
        self.rng = np.random.default_rng(0)

    def active(self, index, residual):
        layer = self.engine.model.weights.layers[index]
        from hybridinfer.reference.model import rms_norm
        x = rms_norm(residual, layer.ffn_norm, self.engine.config.rms_eps)
        truth = ffn_activation(x @ layer.ffn_gate.T, self.engine.config) != 0
        noise = torch.from_numpy(self.rng.random(truth.shape) < self.extra)
        return truth | noise


@pytest.mark.parametrize("extra", [0.0, 0.3])
def test_oracle_predictor_equals_dense(relu_model, extra):
    dense = hybridinfer.load(str(relu_model), backend="reference")
    engine = hybridinfer.load(str(relu_model), backend="reference")
    engine.model.sparse = PredictedSparseFFN(engine.config, OraclePredictor(engine, extra))
    expected = dense.logits(IDS)
    assert relative_error(decode_logits(engine, IDS), expected) < 1e-5
    assert relative_error(engine.logits(IDS), expected) < 1e-5


class DropHalf:
    """Predicts a fixed random half of the neurons: the sparse result then differs from dense."""

    def __init__(self, n_ff):
        self.mask = torch.from_numpy(np.random.default_rng(1).random(n_ff) < 0.5)

    def active(self, index, residual):
        return self.mask.expand(residual.shape[0], -1)


def test_missed_neurons_change_the_result_identically_in_both_paths(relu_model):
    engine = hybridinfer.load(str(relu_model), backend="reference")
    dense = engine.logits(IDS)
    engine.model.sparse = PredictedSparseFFN(engine.config, DropHalf(engine.config.n_ff))
    batched, one_by_one = engine.logits(IDS), decode_logits(engine, IDS)
    assert relative_error(one_by_one, batched) < 1e-5
    assert relative_error(batched, dense) > 1e-3


def test_sparse_modes_refuse_silu_models(tmp_path):
    path = write_tiny_gguf(tmp_path / "silu.gguf", random_weights(seed=2))
    with pytest.raises(HybridInferError, match="SiLU"):
        hybridinfer.load(str(path), exact=True)
