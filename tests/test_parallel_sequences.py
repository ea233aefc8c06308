"""Several sequences decoded together (`Decoder.forward_sequences`): each sequence's logits are what
decoding it alone gives, bit for bit for the dense FFN (every product's arithmetic is per token), within the
sparse path's rounding for --exact and --predictors (their batch path quantizes the down projection's
coefficients per row set, `sparse_ffn._several`) and for CATS and TEAL sparsity files."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.predictors.file import save_predictors
from logit_checks import relative_error, write_sparsity_file
from test_packed_engine import random_predictors
from tiny_models import random_weights, write_tiny_gguf

PROMPTS = [[1, 100, 200, 17], [1, 5], [1, 270, 5, 66, 9, 3, 8], [1, 42, 42]]


@pytest.fixture(scope="module", params=[T.Q4_1, T.Q8_0, T.F16], ids=lambda t: t.name)
def model(request, tmp_path_factory):
    weights = random_weights(seed=23, n_ff=256, gate_bias=-8.0)
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / f"relu-{request.param.name}.gguf", weights,
                           weight_type=request.param, activation="fatrelu", threshold=0.05)


def prefilled(path, n_ctx=64, **options):
    engine = hybridinfer.load(str(path), n_ctx=n_ctx * len(PROMPTS), **options)
    model = engine.model
    model.hold_sequences(len(PROMPTS), n_ctx)
    for s, prompt in enumerate(PROMPTS):
        model.forward(torch.tensor(prompt), 0, sequence=s)
    return model


def alone(model, tokens, positions, sequences):
    return np.concatenate([model.forward(torch.tensor([t]), int(p), sequence=int(s)).numpy()
                           for t, p, s in zip(tokens, positions, sequences)])


@pytest.mark.parametrize("mode", ["dense", "exact", "predictors"])
def test_sequences_decoded_together_equal_each_alone(model, mode, tmp_path):
    options = {"exact": mode == "exact"}
    if mode == "predictors":  # threshold 20: each token's own few candidates, their union read together
        path = tmp_path / "p.pred.gguf"
        reference = hybridinfer.load(str(model), backend="reference")
        save_predictors(str(path), random_predictors(reference, threshold=20.0), reference.fingerprint)
        options = {"predictors": str(path)}
    m = prefilled(model, **options)
    order = np.array([2, 0, 3, 1])  # not in slot order
    tokens = np.array([7, 11, 13, 2])
    positions = np.array([len(PROMPTS[s]) for s in order])
    together = m.forward_sequences(tokens, positions, order).numpy().copy()
    expected = alone(m, tokens, positions, order)  # the same keys and values written again
    if mode == "dense":
        np.testing.assert_array_equal(together, expected)
    else:
        np.testing.assert_allclose(together, expected, rtol=0, atol=2e-2 * np.abs(expected).max())
    assert not np.allclose(together[0], together[1])  # sequences did not share their caches


@pytest.mark.parametrize("method", ["cats", "teal"])
def test_sequences_decoded_together_with_a_sparsity_file_equal_each_alone(silu_model, method, tmp_path):
    """What `serve --parallel N --sparsity-file F` decodes: the batch path (CATS: the union of the passing neurons;
    TEAL: the dense products of the zeroed inputs) against each token's one-token path (TEAL: the column-sparse
    products over the transposes), float activations so that only the paths differ."""
    path = write_sparsity_file(silu_model, tmp_path / f"{method}.sparsity.gguf", 0.5, method)
    order, tokens = np.array([2, 0, 3, 1]), np.array([7, 11, 13, 2])
    positions = np.array([len(PROMPTS[s]) for s in order])
    m = prefilled(silu_model, sparsity_file=str(path), float_activations=True)
    together = m.forward_sequences(tokens, positions, order).numpy().copy()
    assert relative_error(together, alone(m, tokens, positions, order)) < 1e-4
    dense = prefilled(silu_model, float_activations=True).forward_sequences(tokens, positions, order).numpy()
    assert relative_error(together, dense) > 1e-3  # the thresholds applied


def test_two_steps_keep_the_sequences_apart(model):
    m = prefilled(model)
    positions = np.array([len(p) for p in PROMPTS])
    slots = np.arange(len(PROMPTS))
    m.forward_sequences(np.array([3, 4, 5, 6]), positions, slots)
    second = m.forward_sequences(np.array([9, 9, 9, 9]), positions + 1, slots).numpy().copy()
    for s, prompt in enumerate(PROMPTS):  # each sequence from scratch, alone, in slot 0 of a fresh model
        fresh = prefilled(model)
        fresh.forward(torch.tensor(prompt + [3 + s]), 0, sequence=0)
        np.testing.assert_array_equal(fresh.forward(torch.tensor([9]), len(prompt) + 1).numpy()[0], second[s])


def test_the_hybrid_runtime_refuses_several_sequences(model):
    m = prefilled(model)
    m.gpu_side = object()  # as the builder makes a hybrid run's decoder
    with pytest.raises(HybridInferError, match="--parallel 1"):
        m.forward_sequences(np.array([1, 2]), np.array([4, 2]), np.array([0, 1]))
    with pytest.raises(HybridInferError, match="--parallel 1"):
        m.hold_sequences(2, 16)
