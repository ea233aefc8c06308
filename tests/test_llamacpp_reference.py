"""llama.cpp as a reference (only when the optional llama-cpp-python is installed): its decode rate on the
default model, and its greedy next token agreeing with our forward pass."""

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import hybridinfer  # noqa: E402
from hybridinfer.eval import llamacpp_reference  # noqa: E402
from hybridinfer.errors import HybridInferError  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "1, 2, 3, 4,"]


def test_available():
    assert llamacpp_reference.available()


def test_decode_rate_is_positive(smollm_path):
    rate = llamacpp_reference.decode_rate(str(smollm_path), n_threads=1, n_gen=8, repetitions=1)
    assert rate["tokens_per_second"] > 0
    assert rate["ms_per_token"] == pytest.approx(1000 / rate["tokens_per_second"])
    assert rate["n_threads"] == 1 and rate["version"] == llama_cpp.__version__


def test_tokenizer_and_greedy_next_token_match_ours(smollm_path):
    engine = hybridinfer.load(str(smollm_path), n_ctx=128)
    llm = llamacpp_reference.load(str(smollm_path), n_threads=1)
    try:
        for text in PROMPTS:
            assert engine.tokenize(text, add_bos=False) == llm.tokenize(text.encode(), add_bos=False), text
            ids = engine.tokenize(text)
            ours = engine.logits(ids)[-1]
            llm.reset()
            llm.eval(ids)
            theirs = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
            assert theirs.shape == ours.shape
            assert int(theirs.argmax()) == int(ours.argmax()), text
    finally:
        llm.close()


def test_unloadable_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(HybridInferError) as info:
        llamacpp_reference.decode_rate(str(bad))
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(HybridInferError):
        llamacpp_reference.decode_rate(str(tmp_path / "missing.gguf"))
