"""tools/decode_perplexity.py on a tiny SiLU model with a CATS file: the decoded positions are the ones the prompt
path scores (equal log-probabilities on a float32 model, where down_t is exact), and the sparse run differs from
the dense one."""

import numpy as np

import hybridinfer
from logit_checks import F32_CACHE, write_sparsity_file
from tools.decode_perplexity import decode_perplexity, decoded_log_probs, log_softmax


def test_decoded_positions_are_the_prompts_and_the_kl_is_measured(silu_model, tmp_path):
    sparsity = write_sparsity_file(silu_model, tmp_path / "cats.sparsity.gguf", 0.4, "cats")
    engine = hybridinfer.load(str(silu_model), n_ctx=64, float_activations=True, sparsity_file=str(sparsity),
                              **F32_CACHE)
    tokens = np.random.default_rng(3).integers(3, 270, 64).tolist()
    chunk, first = [1] + tokens[1:32], 16
    decoded = decoded_log_probs(engine, chunk, first)
    prompt = log_softmax(engine.logits(chunk))[first:-1]
    assert decoded.shape == prompt.shape == (32 - first - 1, engine.config.n_vocab)
    np.testing.assert_allclose(decoded, prompt, atol=1e-3)
    result = decode_perplexity(engine, tokens, 32, 2)
    assert result["positions"] == 2 * 15 and result["kl_to_dense"] > 1e-4
    assert result["perplexity"] != result["dense_perplexity"]
