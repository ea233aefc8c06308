"""Activation collection: shapes, memory-mapped files, masks equal to the model's true activations, chunking,
split budgets and reuse of a complete collection."""

import os

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.text.corpus import Corpus
from hybridinfer.errors import HybridInferError
from hybridinfer.predictors.collect import (MANIFEST, Collection, collect, collect_from_corpus, documents_by_split,
                                            masks_file, residuals_file, split_budgets, token_chunks, unpack_bits)
from test_predictors_support import N_EMBD, N_FF, random_chunks, write_sparse_model
from test_predictors_support import one_thread  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return hybridinfer.load(str(write_sparse_model(tmp_path_factory.mktemp("m") / "m.gguf", seed=11)), n_ctx=64)


def test_collection_matches_the_models_activations(engine, tmp_path):
    budgets = {"train": 200, "validation": 70, "test": 64}
    chunks = {split: random_chunks(seed, engine.config.n_vocab) for seed, split in enumerate(budgets)}
    collection = collect(engine.model, chunks, budgets, str(tmp_path))
    assert collection.rows == budgets and (collection.n_layer, collection.n_embd, collection.n_ff) == (2, N_EMBD, N_FF)
    for split in budgets:
        assert os.path.getsize(residuals_file(str(tmp_path), split)) == 2 * budgets[split] * N_EMBD * 2
        assert os.path.getsize(masks_file(str(tmp_path), split)) == 2 * budgets[split] * N_FF // 8
    assert engine.model.observers == []

    # evaluate the same validation chunks again and compare with what the model computes
    expected = {0: [], 1: []}
    engine.model.observers.append(
        lambda i, residual, activation: expected[i].append((residual.clone(), activation != 0)))
    stream, left = random_chunks(1, engine.config.n_vocab), 70
    while left > 0:
        chunk = next(stream)[:left]
        engine.model.forward(torch.tensor(chunk), 0)
        left -= len(chunk)
    engine.model.observers.clear()
    reopened = Collection.open(str(tmp_path))
    for layer in range(2):
        residual = torch.cat([r for r, _ in expected[layer]]).numpy()
        active = torch.cat([a for _, a in expected[layer]]).numpy()
        assert isinstance(reopened.residuals("validation", layer), np.memmap)
        np.testing.assert_allclose(reopened.residuals("validation", layer), residual, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(reopened.masks("validation", layer), active)
        np.testing.assert_array_equal(reopened.activation_counts("validation", layer), active.sum(0))
        assert 0.05 < active.mean() < 0.35


def test_unpack_bits_matches_numpy():
    bits = np.random.default_rng(5).random((7, 21)) < 0.3
    packed = np.packbits(bits, axis=1, bitorder="little")
    assert torch.equal(unpack_bits(torch.from_numpy(packed), 21), torch.from_numpy(bits))


def test_token_chunks_start_with_bos_and_keep_every_token():
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    chunks = list(token_chunks(["abcdef", "gh"], encode, bos_id=1, chunk_tokens=4))
    assert all(chunk[0] == 1 and len(chunk) <= 4 for chunk in chunks)
    assert [t for chunk in chunks for t in chunk[1:]] == encode("abcdef\n\ngh\n\n")
    assert [len(c) for c in token_chunks(["abcdef"], encode, bos_id=None, chunk_tokens=4)] == [4, 4]


def test_split_budgets_and_too_few_tokens():
    assert split_budgets(10_000) == {"train": 8000, "validation": 1000, "test": 1000}
    with pytest.raises(HybridInferError, match="--tokens"):
        split_budgets(150)


def test_empty_held_out_splits_borrow_training_documents():
    corpus = Corpus(train=[f"doc {i}" for i in range(40)])
    documents = documents_by_split(corpus)
    assert len(documents["validation"]) == 4 and len(documents["test"]) == 4 and len(documents["train"]) == 32
    assert not set(documents["train"]) & (set(documents["validation"]) | set(documents["test"]))


def test_collect_from_corpus_reuses_a_complete_collection(engine, tmp_path):
    words = ["alpha beta gamma delta " * 8 + str(i) for i in range(60)]
    corpus = Corpus(train=words[:40], validation=words[40:50], test=words[50:])
    first, reused = collect_from_corpus(engine, corpus, 600, str(tmp_path), chunk_tokens=32, corpus_label="x")
    assert not reused and first.rows == {"train": 472, "validation": 64, "test": 64}
    _, reused = collect_from_corpus(engine, corpus, 600, str(tmp_path), chunk_tokens=32, corpus_label="x")
    assert reused
    _, reused = collect_from_corpus(engine, corpus, 600, str(tmp_path), chunk_tokens=32, corpus_label="other")
    assert not reused
    os.unlink(os.path.join(tmp_path, MANIFEST))
    assert Collection.open(str(tmp_path)) is None


def test_a_corpus_too_small_is_a_one_line_error(engine, tmp_path):
    corpus = Corpus(train=["a few words"] * 3, validation=["x"], test=["y"])
    with pytest.raises(HybridInferError, match="add text with --corpus"):
        collect_from_corpus(engine, corpus, 2000, str(tmp_path), chunk_tokens=32)
