"""Helpers for the predictor tests — a tiny activation-sparse FATReLU model, random token chunks — and checks
that the tiny model is as sparse as the tests assume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hybridinfer
from tiny_models import random_weights, write_tiny_gguf

N_EMBD, N_FF = 64, 96


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls run fastest on one thread, and far slower on several when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_weights(seed: int, n_layer: int = 2, n_embd: int = N_EMBD, n_ff: int = N_FF) -> dict[str, np.ndarray]:
    """Random weights whose gate rows have log-normal norms, so that with FATReLU at threshold 1 about 15%
    of the neurons fire per token and some neurons fire far more often than others (hot and cold neurons)."""
    weights = random_weights(n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for i in range(n_layer):
        weights[f"blk.{i}.ffn_gate.weight"] *= rng.lognormal(0.0, 0.5, size=(n_ff, 1)).astype(np.float32)
    return weights


def write_sparse_model(path: Path, seed: int, n_layer: int = 2, **dims) -> Path:
    return write_tiny_gguf(path, sparse_weights(seed, n_layer, **dims), activation="fatrelu", threshold=1.0,
                           context_length=256)


def random_chunks(seed: int, n_vocab: int, length: int = 64, bos: int = 1):
    """An endless stream of BOS + random token ids."""
    rng = np.random.default_rng(seed)
    while True:
        yield [bos] + rng.integers(3, n_vocab, length - 1).tolist()


def text_corpus_file(path: Path, seed: int, paragraphs: int = 200) -> Path:
    """Paragraphs of random words from a small vocabulary (some structure for a predictor to learn)."""
    rng = np.random.default_rng(seed)
    words = "the a of and to in is it that hello world python function returns value list string".split()
    path.write_text("\n\n".join(" ".join(rng.choice(words, 30)) for _ in range(paragraphs)) + "\n")
    return path


def test_sparse_model_has_hot_and_cold_neurons(tmp_path):
    engine = hybridinfer.load(str(write_sparse_model(tmp_path / "m.gguf", seed=3)), n_ctx=64)
    seen = []
    engine.model.observers.append(lambda index, residual, activation: seen.append((activation != 0).float()))
    engine.model.forward(torch.tensor(next(random_chunks(4, engine.config.n_vocab))), 0)
    active = torch.cat(seen)
    assert 0.05 < float(active.mean()) < 0.35
    frequency = active.mean(0)
    assert float(frequency.max()) > 2 * float(frequency.median()) > 4 * float(frequency.min())
