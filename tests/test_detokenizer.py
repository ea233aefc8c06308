"""Streaming detokenization equals batch decode, and never emits half a character."""

import os

import pytest

from hybridinfer.text.detokenizer import StreamingDetokenizer
from hybridinfer.text.tokenizer import BYTE
from hybridinfer.text.vocabulary import tokenizer_from_metadata
from vocab_fixtures import SMOLLM2_PATH, spm_metadata, tiny_gpt2_metadata

TEXTS = ["Hello world", "  spaced  out ", "emoji 😀👍🏽 and 中文 é", "line\nbreaks\n\n", "12345", "", "x"]


def stream(tokenizer, ids, **kwargs):
    detokenizer = StreamingDetokenizer(tokenizer, **kwargs)
    pieces = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert detokenizer.text == "".join(pieces)
    return pieces


@pytest.fixture(scope="module", params=["spm", "tiny-gpt2", "smollm2"])
def tokenizer(request):
    if request.param == "spm":
        return tokenizer_from_metadata(spm_metadata())
    if request.param == "tiny-gpt2":
        return tokenizer_from_metadata(tiny_gpt2_metadata())
    if not os.path.exists(SMOLLM2_PATH):
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2_PATH} (set HYBRIDINFER_TEST_MODEL)")
    from hybridinfer.model_file.gguf_file import GGUFFile
    return tokenizer_from_metadata(GGUFFile(SMOLLM2_PATH).metadata)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_special", [True, False])
def test_stream_equals_decode(tokenizer, text, skip_special):
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids, skip_special=skip_special)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special=skip_special)
    assert not any("\ufffd" in piece for piece in pieces)


def test_continuation_keeps_leading_space(tokenizer):
    ids = tokenizer.encode("a b", add_bos=False)[1:]
    assert "".join(stream(tokenizer, ids, strip_leading_space=False)) == \
        tokenizer.decode(ids, strip_leading_space=False)


def test_spm_emoji_over_byte_tokens_is_held_back_until_complete():
    tokenizer = tokenizer_from_metadata(spm_metadata())
    ids = tokenizer.encode("😀", add_bos=False)
    byte_ids = [i for i in ids if tokenizer.token_types[i] == BYTE]
    assert len(byte_ids) == 4
    detokenizer = StreamingDetokenizer(tokenizer)
    emitted = [detokenizer.add(i) for i in ids]
    assert emitted[-4:] == ["", "", "", "😀"] and detokenizer.flush() == ""


def test_incomplete_bytes_are_replaced_on_flush():
    tokenizer = tokenizer_from_metadata(spm_metadata())
    first_byte = tokenizer.token_id("<0xF0>")
    detokenizer = StreamingDetokenizer(tokenizer)
    assert detokenizer.add(first_byte) == ""
    assert detokenizer.flush() == "\ufffd" == tokenizer.decode([first_byte])


def test_control_tokens_hidden_unless_asked():
    tokenizer = tokenizer_from_metadata(tiny_gpt2_metadata())
    ids = tokenizer.encode("hello<|endoftext|>")
    assert "".join(stream(tokenizer, ids)) == "hello"
    assert "".join(stream(tokenizer, ids, skip_special=False)) == "hello<|endoftext|>"
