"""Byte-level BPE vocabularies (tokenizer.ggml.model == "gpt2"): SmolLM2's real vocabulary against transformers'
tokenizer built from the same GGUF, plus a tiny hand-made vocabulary that needs no file."""

import os
import time

import pytest

from hybridinfer.errors import HybridInferError
from hybridinfer.text.vocabulary import tokenizer_from_metadata
from hybridinfer.text.tokenizer_bpe import PRE_TOKENIZERS, ByteLevelBPETokenizer
from vocab_fixtures import SMOLLM2_PATH, tiny_gpt2_metadata

TEXTS = [
    "Hello world", "hello", " Hello", "  leading spaces", "trailing spaces   ", "a  b   c    d", "\n\nnewlines\n",
    "tabs\tand\r\nCRLF", "12345", "3.14159 and 1,000,000", "x = 42 + y1 * 7", "don't I'll we're it's they've",
    "DON'T SHOUT'S", "café résumé naïve", "中文字符测试", "emoji 😀 👍🏽 🇫🇷", "Привет мир", "مرحبا", "∑∫√∞≠",
    "def f(a, b):\n    return a + b  # sum\n", "if (x) { y[0] = \"s\"; }", "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|>assistant\n", "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start", "a" * 100,
    " ", "",
    "https://example.com/path?q=1&r=2", "C'est l'été!!!", "....!!!???", "    ", " \n \n ",
]


@pytest.fixture(scope="module")
def smollm2():
    if not os.path.exists(SMOLLM2_PATH):
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2_PATH} (set HYBRIDINFER_TEST_MODEL)")
    from hybridinfer.model_file.gguf_file import GGUFFile
    metadata = GGUFFile(SMOLLM2_PATH).metadata
    start = time.perf_counter()
    tokenizer = tokenizer_from_metadata(metadata)
    return tokenizer, time.perf_counter() - start


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    if not os.path.exists(SMOLLM2_PATH):
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2_PATH}")
    folder, name = os.path.split(os.path.abspath(SMOLLM2_PATH))
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_smollm2_vocabulary(smollm2):
    tokenizer, seconds = smollm2
    assert isinstance(tokenizer, ByteLevelBPETokenizer) and tokenizer.pre_tokenizer_name == "smollm"
    assert seconds < 2.0
    assert tokenizer.vocab_size == 49152 and not tokenizer.add_bos
    im_end, endoftext = tokenizer.token_id("<|im_end|>"), tokenizer.token_id("<|endoftext|>")
    assert {im_end, endoftext} <= tokenizer.eog_ids and tokenizer.eos_id in tokenizer.eog_ids
    assert not tokenizer.is_eog(tokenizer.token_id("<|im_start|>"))


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_matches_transformers(smollm2, reference, text):
    tokenizer, _ = smollm2
    assert tokenizer.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_decode_round_trips(smollm2, text):
    tokenizer, _ = smollm2
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special=False) == text
    assert tokenizer.encode(tokenizer.decode(ids, skip_special=False)) == ids


def test_smollm2_known_encodings(smollm2):
    tokenizer, _ = smollm2
    token = tokenizer.token_id
    assert tokenizer.encode("Hello world") == [token("Hello"), token("\u0120world")]
    assert tokenizer.encode("12345") == [token(d) for d in "12345"]  # smollm splits every digit
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>") == \
        [token("<|im_start|>"), token("user"), token("\u010a"), token("hi"), token("<|im_end|>")]
    assert tokenizer.encode("<|im_start|>", parse_special=False) != [token("<|im_start|>")]
    assert tokenizer.decode([token("<|im_end|>")]) == "" and tokenizer.token_bytes(token("<|im_end|>")) == b""
    assert tokenizer.token_bytes(token("\u0120world")) == b" world"


def test_smollm2_splits_numerals_first_as_llama_cpp(smollm2):
    # llama.cpp's "smollm" pre-tokenizer isolates every \p{N} character before GPT-2's regex runs (as SmolLM2's
    # own Digits pre-tokenizer does); transformers' GGUF converter applies GPT-2's regex alone, so these differ
    tokenizer, _ = smollm2
    token = tokenizer.token_id
    assert tokenizer.encode("a \n1") == [token("a"), token("\u0120\u010a"), token("1")]
    assert tokenizer.encode(" \u216b") == [token("\u0120")] + [token(c) for c in "\u00e2\u0127\u00ab"]


def test_tiny_vocabulary():
    tokenizer = tokenizer_from_metadata(tiny_gpt2_metadata())
    token = tokenizer.token_id
    assert tokenizer.encode("hello world") == [token("hello"), token("\u0120world")]
    assert tokenizer.encode("hello!<|endoftext|>") == [token("hello"), token("!"), 0]
    assert tokenizer.encode("hi", add_bos=True) == [0, token("h"), token("i")]
    assert tokenizer.decode(tokenizer.encode("hello world é")) == "hello world é"
    assert tokenizer.eog_ids == {0, 1}
    assert [tokenizer.token_bytes(i) for i in tokenizer.encode("é")] == [b"\xc3", b"\xa9"]


def test_absent_pre_uses_llama_cpp_default():
    tokenizer = tokenizer_from_metadata(tiny_gpt2_metadata(pre=None))
    assert tokenizer.pre_tokenizer_name == "default"
    assert tokenizer.decode(tokenizer.encode("a+b=c, 1234!")) == "a+b=c, 1234!"


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_every_supported_pre_tokenizer_builds(pre):
    tokenizer = tokenizer_from_metadata(tiny_gpt2_metadata(pre=pre))
    text = "Hello world, it's 2024!\n\t中文 😀"
    assert tokenizer.decode(tokenizer.encode(text, add_bos=False)) == text


def test_unknown_pre_is_a_one_line_error():
    with pytest.raises(HybridInferError, match="'made-up'.*smollm") as info:
        tokenizer_from_metadata(tiny_gpt2_metadata(pre="made-up"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", ["bert-ish", None])
def test_unknown_or_missing_tokenizer_model(model):
    metadata = tiny_gpt2_metadata()
    metadata["tokenizer.ggml.model"] = model
    if model is None:
        del metadata["tokenizer.ggml.model"]
    with pytest.raises(HybridInferError, match="tokenizer.ggml.model"):
        tokenizer_from_metadata(metadata)
