"""The committed ProSparse-recipe reference model (Q8_0 GGUF, with its predictors and activation counts):
a genuinely sparse model through the sparse, predictor and hybrid paths."""

from pathlib import Path

import numpy as np
import pytest

import hybridinfer
from hybridinfer.corpus import build_corpus
from hybridinfer.perplexity import perplexity

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL, PREDICTORS, ACTIVATIONS = (MODELS / f"prosparse-tiny.{s}.gguf" for s in ("q8_0", "pred", "act"))


@pytest.fixture(scope="module")
def text():
    return "\n\n".join(build_corpus().test)[:20000]


def test_exact_equals_dense_and_predictors_cost_little(text):
    dense = hybridinfer.load(str(MODEL), n_ctx=128, backend="reference")
    ids = dense.tokenize(text)[:100]
    exact = hybridinfer.load(str(MODEL), n_ctx=128, exact=True, backend="reference")
    expected = dense.logits(ids)
    assert float(np.abs(exact.logits(ids) - expected).max() / np.abs(expected).max()) < 1e-5
    # the packed backend: int8 activation blocks and the re-quantized transposed down projection (Q8_0 file)
    packed = hybridinfer.load(str(MODEL), n_ctx=128, exact=True)
    assert float(np.abs(packed.logits(ids) - expected).max() / np.abs(expected).max()) < 3e-2
    result = perplexity(hybridinfer.load(str(MODEL), n_ctx=128, predictors=str(PREDICTORS)), text, n_chunk=128,
                        max_chunks=12)
    assert result.perplexity < 1.03 * result.dense_perplexity
    assert result.top1_agreement > 0.9


def test_really_sparse(text):
    engine = hybridinfer.load(str(MODEL), n_ctx=128, exact=True)
    engine.generate(text[:200], max_tokens=8, temperature=0)
    stats = engine.model.sparse_ffn.stats
    assert stats.active / stats.rows < 0.15  # fewer than 15% of the neurons fire


def test_hybrid_with_predictors_matches_the_cpu_predictor_path():
    """Greedy tokens of the hybrid runtime (float32) against the CPU predictor path in float32: the reference
    backend, and the packed kernels with float activations. (The default int8 path moves logits by ~0.5%, and this
    prompt has a near tie at its fourth token: 0.027 between the top two logits.)"""
    prompt = "Return the number of"
    cpu = hybridinfer.load(str(MODEL), n_ctx=128, predictors=str(PREDICTORS), backend="reference")
    packed = hybridinfer.load(str(MODEL), n_ctx=128, predictors=str(PREDICTORS), float_activations=True)
    hybrid = hybridinfer.load(str(MODEL), n_ctx=128, predictors=str(PREDICTORS), vram_budget="80MiB",
                              activations=str(ACTIVATIONS), device="cpu")
    assert 0 < hybrid.hybrid.n_hot < 4 * 1024
    expected = cpu.generate(prompt, max_tokens=12, temperature=0)
    assert hybrid.generate(prompt, max_tokens=12, temperature=0).tokens == expected.tokens
    assert packed.generate(prompt, max_tokens=12, temperature=0).tokens == expected.tokens
