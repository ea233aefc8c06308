"""The Python API on a tiny model: tokenize, logits, generate, stream, prefix reuse, errors."""

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.errors import HybridInferError
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=21), context_length=128)
    return hybridinfer.load(str(path), n_ctx=64)


def test_tokenize_round_trip(engine):
    ids = engine.tokenize("hello world, é!")
    assert ids[0] == 1
    assert engine.detokenize(ids) == "hello world, é!"
    assert engine.tokenize("hello", add_bos=False)[0] != 1


def test_logits_shape_and_values(engine):
    ids = engine.tokenize("the world of a")
    logits = engine.logits(ids)
    assert logits.dtype == np.float32 and logits.shape == (len(ids), engine.config.n_vocab)
    again = engine.logits(ids[:3])
    np.testing.assert_allclose(again, logits[:3], rtol=1e-5, atol=1e-5)


def test_feed_reuses_cached_prefix(engine):
    ids = engine.tokenize("the world of a hello")
    engine.reset()
    engine.feed(ids[:4])
    last, evaluated = engine.feed(ids)
    assert evaluated == len(ids) - 4
    np.testing.assert_allclose(last, engine.logits(ids)[-1], rtol=1e-5, atol=1e-5)
    _, evaluated = engine.feed(ids[:2] + [5, 6])  # diverges after two tokens
    assert evaluated == 2


def test_greedy_generation_is_deterministic_and_streams_the_same_text(engine):
    first = engine.generate("the world", max_tokens=8, temperature=0)
    second = engine.generate("the world", max_tokens=8, temperature=0)
    assert first.tokens == second.tokens and first.text == second.text
    assert first.finish_reason in ("length", "stop")
    streamed = "".join(chunk.text for chunk in engine.stream("the world", max_tokens=8, temperature=0))
    assert streamed == first.text
    t = first.timings
    assert t.prompt_tokens > 0 and t.prompt_ms > 0 and t.eval_tokens == len(first.tokens) - 1


def test_greedy_tokens_follow_argmax_of_logits(engine):
    prompt = engine.tokenize("a hello")
    result = engine.generate(prompt, max_tokens=4, temperature=0)
    history = list(prompt)
    for token in result.tokens:
        assert token == int(np.argmax(engine.logits(history)[-1]))
        history.append(token)


def test_seeded_sampling_reproduces(engine):
    a = engine.generate("the", max_tokens=10, temperature=1.0, seed=5, top_k=0, top_p=1.0, min_p=0.0)
    b = engine.generate("the", max_tokens=10, temperature=1.0, seed=5, top_k=0, top_p=1.0, min_p=0.0)
    assert a.tokens == b.tokens


def test_generation_stops_when_the_context_is_full(engine):
    prompt = engine.tokenize("the world")
    prompt += [259 + i % 10 for i in range(50 - len(prompt))]  # 50 tokens of a 64-token context
    result = engine.generate(prompt, max_tokens=-1, temperature=0)
    assert len(prompt) + len(result.tokens) <= engine.n_ctx
    assert result.finish_reason == "stop" or len(prompt) + len(result.tokens) == engine.n_ctx


def test_prompt_longer_than_context_is_a_clear_error(engine):
    with pytest.raises(HybridInferError, match="longer than the context size"):
        engine.generate("hello " * 100, max_tokens=2)


def test_logits_agree_with_a_fresh_model_forward(engine):
    ids = engine.tokenize("is it")
    expected = engine.model.forward(torch.tensor(ids), 0).numpy()
    np.testing.assert_allclose(engine.logits(ids), expected, rtol=1e-6, atol=1e-6)


def test_generated_text_keeps_the_space_that_joins_it_to_the_prompt(engine):
    """A continuation's first piece keeps its leading space (it is not the start of the text)."""
    result = engine.generate("the", max_tokens=6, temperature=0)
    assert result.text == engine.tokenizer.decode(result.tokens, strip_leading_space=False)
