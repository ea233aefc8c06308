"""The default model, SmolLM2-135M-Instruct (Q4_1), against transformers dequantizing the same file."""

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
    return hybridinfer.load(str(smollm_path), n_ctx=256)


@pytest.fixture(scope="module")
def hf_model(smollm_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm_path.parent), gguf_file=smollm_path.name, dtype=torch.float32)
    return model.eval()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_last_token_logits_match_transformers(engine, hf_model, prompt):
    ids = engine.tokenize(prompt)
    ours = torch.from_numpy(engine.logits(ids)[-1])
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0, -1]
    assert float((ours - expected).abs().max() / expected.abs().max()) < 1e-3


def test_32_greedy_tokens_identical_to_transformers(engine, hf_model):
    ids = engine.tokenize(PROMPTS[0])
    result = engine.generate(ids, max_tokens=32, temperature=0, repeat_penalty=1.0)
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = out[0, len(ids):].tolist()
    assert len(result.tokens) == 32
    assert result.tokens == expected[:32]
