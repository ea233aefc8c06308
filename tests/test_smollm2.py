"""The default model, SmolLM2-135M-Instruct (Q4_1), against transformers dequantizing the same file: the
reference backend exactly; the packed backend (numba kernels) exactly with float activations, and within
int8-activation tolerance by default."""

import numpy as np
import pytest
import torch

import hybridinfer

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 12 * 7?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, astronauts landed on the",
]


@pytest.fixture(scope="module")
def engine(smollm_path):
    return hybridinfer.load(str(smollm_path), n_ctx=256, backend="reference")


@pytest.fixture(scope="module")
def packed_float(smollm_path):
    return hybridinfer.load(str(smollm_path), n_ctx=256, float_activations=True)


@pytest.fixture(scope="module")
def packed(smollm_path):
    return hybridinfer.load(str(smollm_path), n_ctx=256)


@pytest.fixture(scope="module")
def hf_model(smollm_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm_path.parent), gguf_file=smollm_path.name, dtype=torch.float32)
    return model.eval()


def last_logits(engine, hf_model, prompt):
    """(ours, transformers') logits of the prompt's last position."""
    ids = engine.tokenize(prompt)
    ours = torch.from_numpy(engine.logits(ids)[-1])
    with torch.no_grad():
        return ours, hf_model(torch.tensor([ids])).logits[0, -1]


def relative_error(ours, expected):
    return float((ours - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_last_token_logits_match_transformers(engine, hf_model, prompt):
    assert relative_error(*last_logits(engine, hf_model, prompt)) < 1e-3


def test_32_greedy_tokens_identical_to_transformers(engine, hf_model):
    ids = engine.tokenize(PROMPTS[0], add_bos=True)
    result = engine.generate(ids, max_tokens=32, temperature=0, repeat_penalty=1.0)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = out[0, len(ids):].tolist()
    assert len(result.tokens) == 32
    assert result.tokens == expected[:32]


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_packed_backend_with_float_activations_matches_transformers(packed_float, hf_model, prompt):
    assert relative_error(*last_logits(packed_float, hf_model, prompt)) < 1e-3


@pytest.mark.parametrize("prompt", PROMPTS)
def test_packed_backend_int8_activations_close_to_transformers(packed, hf_model, prompt):
    """llama.cpp's int8 activation blocks: logits move by a few percent of their range, the ranking barely."""
    ours, expected = last_logits(packed, hf_model, prompt)
    assert relative_error(ours, expected) < 0.15
    assert len(set(ours.topk(5).indices.tolist()) & set(expected.topk(5).indices.tolist())) >= 4


def test_packed_decoding_equals_its_own_prefill(packed):
    """Token-by-token decoding through the cache gives the logits a batch evaluation gives (same kernels)."""
    ids = packed.tokenize(PROMPTS[1])
    batch = packed.logits(ids)
    packed.reset()
    steps = [packed.feed(ids[:n])[0] for n in range(1, len(ids) + 1)]
    assert abs(np.stack(steps) - batch).max() / abs(batch).max() < 1e-4
