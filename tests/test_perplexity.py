"""Perplexity: llama.cpp's chunking and scoring, and the KL cost report of sparse modes."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.eval.perplexity import perplexity

TEXT = "the world is a hello of it and that, " * 30


def test_matches_a_direct_computation(relu_model):
    engine = hybridinfer.load(str(relu_model))
    result = perplexity(engine, TEXT, n_chunk=32)
    tokens = engine.tokenizer.encode(TEXT, add_bos=False)
    nll = []
    for c in range(len(tokens) // 32):
        chunk = [1] + tokens[c * 32 + 1:(c + 1) * 32]
        logp = torch.log_softmax(torch.from_numpy(engine.logits(chunk)).double(), -1).numpy()
        nll += [-logp[i, chunk[i + 1]] for i in range(16, 31)]
    assert result.chunks == len(tokens) // 32 and result.scored_tokens == len(nll)
    assert result.perplexity == pytest.approx(math.exp(np.mean(nll)), rel=1e-9)
    assert result.kl_to_dense is None


def test_exact_mode_costs_nothing(relu_model):
    dense = perplexity(hybridinfer.load(str(relu_model)), TEXT, n_chunk=32)
    exact = perplexity(hybridinfer.load(str(relu_model), exact=True), TEXT, n_chunk=32)
    assert exact.perplexity == pytest.approx(dense.perplexity, rel=1e-5)
    assert exact.dense_perplexity == pytest.approx(dense.perplexity, rel=1e-9)
    assert abs(exact.kl_to_dense) < 1e-6 and exact.top1_agreement == 1.0


def test_text_shorter_than_a_chunk_is_a_clear_error(relu_model):
    with pytest.raises(HybridInferError, match="fewer than one chunk"):
        perplexity(hybridinfer.load(str(relu_model)), "hello", n_chunk=32)


def test_cli_json(relu_model, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    result = CliRunner().invoke(cli, ["perplexity", "-m", str(relu_model), "-f", str(text), "-c", "32", "--exact",
                                      "--chunks", "2", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["chunks"] == 2 and record["perplexity"] > 1 and record["kl_to_dense"] < 1e-6
