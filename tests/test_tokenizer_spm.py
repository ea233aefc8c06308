"""SentencePiece vocabularies (tokenizer.ggml.model == "llama") must tokenize as llama.cpp does: checked against
sentencepiece's own encoder for a LLaMA-like model trained here, and against a plain transcription of
llama.cpp's merge loop."""

import pytest

from hybridinfer.errors import HybridInferError
from hybridinfer.text.tokenizer import BYTE
from hybridinfer.text.vocabulary import tokenizer_from_metadata
from hybridinfer.text.tokenizer_spm import SentencePieceTokenizer
from vocab_fixtures import llama_cpp_spm_fragment, spm_metadata, spm_processor

TEXTS = [
    "Hello world", "Return a new string.", "hello", " leading space", "trailing space ", "  two  spaces  ",
    "a\nb\n\nc\n", "\n", "\tTabbed\tline", "    indented code: for i in range(10): print(i)",
    "12345 and 3.14159", "2024-01-01", "café résumé naïve", "中文字符", "emoji 😀 and 👍🏽!", "mixed é中😀x", "x" * 50,
    " ", "",
    "don't won't it's", "def f(a, b):\n    return a + b\n", "<<>> [[ ]] {} ()", "Ünïcödé ÀÉÎÕÜ", "∑∫√∞≠",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_metadata(spm_metadata())


@pytest.fixture(scope="module")
def sp():
    return spm_processor()


def test_factory_picks_sentencepiece(tokenizer):
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.add_bos) == (1, 2, True)
    assert tokenizer.vocab_size == 800 and 2 in tokenizer.eog_ids and tokenizer.is_eog(2)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_sentencepiece(tokenizer, sp, text):
    assert tokenizer.encode(text) == [1] + sp.encode(text)
    assert tokenizer.encode(text, add_bos=False) == sp.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_llama_cpp_merge_loop(tokenizer, text):
    if not text:
        return
    metadata = spm_metadata()
    escaped = (" " + text).replace(" ", "\u2581")
    expected = llama_cpp_spm_fragment(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"], escaped)
    assert tokenizer.encode(text, add_bos=False) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(tokenizer, sp, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text == sp.decode(ids[1:])
    assert tokenizer.encode(tokenizer.decode(ids)) == ids


def test_byte_fallback_spells_missing_characters_as_bytes(tokenizer):
    ids = tokenizer.encode("😀", add_bos=False)
    byte_ids = [i for i in ids if tokenizer.token_types[i] == BYTE]
    assert b"".join(tokenizer.token_bytes(i) for i in byte_ids) == "😀".encode()
    assert all(len(tokenizer.token_bytes(i)) == 1 for i in byte_ids)
    assert tokenizer.decode(ids) == "😀"


def test_special_tokens_in_text(tokenizer, sp):
    ids = tokenizer.encode("<s>hello</s> world")
    # llama.cpp: specials are cut out; each text fragment after a special gets the space prefix
    assert ids == [1, 1] + sp.encode("hello") + [2] + sp.encode(" world")
    assert tokenizer.encode("<s>", add_bos=False) == [1]
    assert tokenizer.decode(ids, skip_special=False) == "<s><s>hello</s> world"
    assert tokenizer.decode(ids) == "hello world"
    assert tokenizer.token_bytes(1) == b"" and tokenizer.decode([1], skip_special=False) == "<s>"


def test_parse_special_false_keeps_control_text_as_text(tokenizer, sp):
    assert tokenizer.encode("<s>hi", add_bos=False, parse_special=False) == sp.encode("<s>hi")


def test_without_space_prefix(sp):
    tokenizer = tokenizer_from_metadata(spm_metadata(**{"tokenizer.ggml.add_space_prefix": False}))
    ids = tokenizer.encode("hello world", add_bos=False)
    assert not tokenizer.tokens[ids[0]].startswith("\u2581")
    assert tokenizer.decode(ids) == "hello world"
    assert tokenizer.decode(tokenizer.encode(" x")) == " x"


def test_continuation_keeps_leading_space(tokenizer):
    ids = tokenizer.encode("Hello world", add_bos=False)
    start = max(i for i, t in enumerate(ids) if tokenizer.tokens[t].startswith("\u2581"))
    assert tokenizer.decode(ids[start:], strip_leading_space=False) == " world"
    assert tokenizer.decode(ids[start:]) == "world"


def test_control_token_reachable_by_merges_as_in_llama_cpp():
    # llama.cpp looks merges up among all token texts, control ones included
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "ab", "\u2581ab", "<ab>", "<", ">", "<ab"]
    types = [2, 3, 3] + [1] * 5 + [3] + [1] * 3
    scores = [0.0, 0.0, 0.0, -5.0, -6.0, -6.0, -1.0, -2.0, 0.0, -7.0, -7.0, -3.0]
    metadata = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
                "tokenizer.ggml.token_type": types}
    tokenizer = tokenizer_from_metadata(metadata)
    assert tokenizer.encode("<ab>", add_bos=False, parse_special=False) == \
        llama_cpp_spm_fragment(tokens, scores, "\u2581<ab>") == [3, 8]
    assert tokenizer.encode("<ab>", add_bos=False) == [8]


def test_inconsistent_vocabulary_is_a_user_error():
    metadata = spm_metadata()
    metadata["tokenizer.ggml.scores"] = metadata["tokenizer.ggml.scores"][:10]
    with pytest.raises(HybridInferError, match="scores"):
        tokenizer_from_metadata(metadata)
