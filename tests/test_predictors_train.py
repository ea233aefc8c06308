"""Training, threshold calibration and metrics on activations collected from a tiny sparse model."""

import math

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.predictors.calibrate import calibrate, threshold_for_recall
from hybridinfer.predictors.collect import collect
from hybridinfer.predictors.metrics import averages, evaluate, prior_recall
from hybridinfer.predictors.model import PredictorSet
from hybridinfer.predictors.train import TrainSettings, default_rank, rank_ladder, train_predictors
from test_predictors_support import N_EMBD, N_FF, random_chunks, write_sparse_model
from test_predictors_support import one_thread  # noqa: F401 (an autouse fixture)

BUDGETS = {"train": 2400, "validation": 600, "test": 600}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    engine = hybridinfer.load(str(write_sparse_model(tmp_path_factory.mktemp("m") / "m.gguf", seed=21)), n_ctx=64,
                               backend="reference")
    chunks = {split: random_chunks(100 + seed, engine.config.n_vocab) for seed, split in enumerate(BUDGETS)}
    return collect(engine.model, chunks, BUDGETS, str(tmp_path_factory.mktemp("work")))


@pytest.fixture(scope="module")
def trained(collection):
    return train_predictors(collection, TrainSettings(rank=16, epochs=12, target_recall=0.9, device="cpu"))


def test_training_beats_the_frequency_prior_at_equal_sparsity(collection, trained):
    predictors, reports = trained
    assert predictors.n_layer == 2 and predictors.ranks == [16, 16]
    assert [r.layer for r in reports] == [0, 1] and all(r.steps > 0 for r in reports)
    layers = evaluate(predictors, collection, "test")
    for m in layers:
        assert m.tokens == 600 and 0.7 < m.true_sparsity < 0.95
        assert m.predicted_sparsity > 0.3
        assert m.recall > m.prior_recall + 0.1, m
    mean = averages(layers)
    assert mean["recall"] == pytest.approx(np.mean([m.recall for m in layers]))


def test_thresholds_reach_the_target_recall_on_held_out_tokens(collection, trained):
    predictors, reports = trained
    assert [r.threshold for r in reports] == predictors.thresholds
    # calibrated on validation: exactly at (or just above) the target there, close to it on unseen test tokens
    for m in evaluate(predictors, collection, "validation"):
        assert 0.9 <= m.recall < 0.92
    for m in evaluate(predictors, collection, "test"):
        assert abs(m.recall - 0.9) < 0.05
    # recalibrating for a higher target lowers every threshold and costs sparsity
    higher = predictors.with_thresholds(calibrate(predictors, collection, 0.98))
    assert all(a < b for a, b in zip(higher.thresholds, predictors.thresholds))
    for loose, strict in zip(evaluate(predictors, collection), evaluate(higher, collection)):
        assert strict.recall > loose.recall and strict.predicted_sparsity < loose.predicted_sparsity


def test_threshold_for_recall_is_the_largest_that_reaches_the_target():
    logits = torch.randn(1000)
    for target in (0.5, 0.9, 0.95, 1.0):
        t = threshold_for_recall(logits, target)
        assert float((logits >= t).double().mean()) >= target
        chosen = logits[logits >= t].min()  # the logit the threshold sits (one float step) below
        above = logits[logits > chosen]
        if above.numel():
            assert float((logits >= above.min()).double().mean()) < target
    assert threshold_for_recall(torch.zeros(0), 0.9) == 0.0


def test_predictor_set_active_is_logits_at_threshold():
    fc1, fc2 = [torch.randn(8, N_EMBD)], [torch.randn(N_FF, 8)]
    predictors = PredictorSet(fc1, fc2, [0.5])
    x = torch.randn(3, N_EMBD)
    logits = predictors.logits(0, x)
    assert logits.shape == (3, N_FF)
    torch.testing.assert_close(logits, torch.relu(x @ fc1[0].T) @ fc2[0].T)
    assert torch.equal(predictors.active(0, x), logits >= 0.5)
    assert predictors.n_params == 8 * (N_EMBD + N_FF) and predictors.rank(0) == 8
    with pytest.raises(ValueError):
        PredictorSet(fc1, [torch.randn(N_FF, 4)])


def test_prior_recall_interpolates_between_neurons():
    train, test = np.array([5, 1, 3]), np.array([10, 0, 30])
    assert prior_recall(train, test, 1 - 1 / 3) == pytest.approx(0.25)  # neuron 0 only
    assert prior_recall(train, test, 1 - 1.5 / 3) == pytest.approx(0.25 + 0.5 * 0.75)
    assert prior_recall(train, test, 0.0) == pytest.approx(1.0)


def test_automatic_rank_climbs_the_ladder_and_stops(collection):
    predictors, reports = train_predictors(collection, TrainSettings(auto_rank=True, epochs=4, device="cpu"))
    ladder = rank_ladder(N_EMBD)
    for r in reports:
        assert r.rank in ladder and set(r.tried) <= set(ladder) and r.tried[ladder[0]] > 0
        tried = sorted(r.tried)
        assert r.rank == tried[-1] or r.tried[tried[-1]] < r.tried[r.rank] + 0.005
    assert predictors.ranks == [r.rank for r in reports]
    assert default_rank(4096) == 1024 and math.prod(rank_ladder(64)) > 0


def test_bad_settings_are_one_line_errors(collection):
    with pytest.raises(HybridInferError, match="--target-recall"):
        train_predictors(collection, TrainSettings(target_recall=1.5))
    with pytest.raises(HybridInferError, match="--device"):
        train_predictors(collection, TrainSettings(device="nonsense"))


def test_ridge_fit_is_calibrated_and_equals_its_numpy_twin(collection):
    predictors, reports = train_predictors(collection, TrainSettings(rank=16, target_recall=0.9, method="ridge",
                                                                     device="cpu"))
    assert predictors.ranks == [16, 16] and [r.threshold for r in reports] == predictors.thresholds
    for m in evaluate(predictors, collection, "validation"):
        assert 0.9 <= m.recall < 0.92
    # the twin: reduced-rank ridge regression written out in float64 numpy
    x = collection.residuals("train", 0).astype(np.float64)
    y = np.unpackbits(collection.packed_masks("train", 0), axis=1, bitorder="little")[:, :N_FF].astype(np.float64)
    gram = x.T @ x
    weight = np.linalg.solve(gram + 1e-2 * gram.diagonal().mean() * np.eye(N_EMBD), x.T @ y)
    v = np.linalg.svd(x @ weight, full_matrices=False)[2][:8].T
    probe = collection.residuals("validation", 0)[:50].astype(np.float64)
    expected = probe @ weight @ v @ v.T
    ours = predictors.logits(0, torch.from_numpy(probe).float()).double().numpy()
    # torch.svd_lowrank finds the top singular vectors approximately (randomized): a few percent here
    assert np.abs(ours - expected).max() < 5e-2 * np.abs(expected).max()


def test_ridge_needs_a_fixed_even_width(collection):
    with pytest.raises(HybridInferError, match="ridge"):
        train_predictors(collection, TrainSettings(auto_rank=True, method="ridge", device="cpu"))
