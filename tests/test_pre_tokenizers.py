"""llama.cpp's BPE pre-tokenizers for the `tokenizer.ggml.pre` values of Llama 3 (llama-bpe), Qwen2/Qwen3 (qwen2),
SmolLM2 (smollm) and the default, on tricky strings: how each splits text before the merges (hand-derived from
llama-vocab.cpp's regexes), and, when llama-cpp-python is installed, whole tokenizations against llama.cpp's with a
real vocabulary (SmolLM2's) written under each pre-tokenizer name."""

import pytest

from hybridinfer.text.tokenizer_bpe import PRE_TOKENIZERS, UNICODE_TO_BYTES, build_bpe_tokenizer
from hybridinfer.text.vocabulary import tokenizer_from_metadata
from vocab_fixtures import SMOLLM2_PATH, tiny_gpt2_metadata

SPLITS = {
    "llama-bpe": {
        "I've 12345 apples!!\n\n  ok": ["I", "'ve", " ", "123", "45", " apples", "!!\n\n", " ", " ok"],
        "HELLO'S world": ["HELLO", "'S", " world"],
        "tab\there\r\nx": ["tab", "\there", "\r\n", "x"],
    },
    "qwen2": {
        "I've 12345 apples!!\n\n  ok": ["I", "'ve", " ", "1", "2", "3", "4", "5", " apples", "!!\n\n", " ", " ok"],
        "HELLO'S world": ["HELLO", "'S", " world"],
        "中文 text": ["中文", " text"],
    },
    "smollm": {
        "abc 123": ["abc", " ", "1", "2", "3"],
        "HELLO'S": ["HELLO", "'", "S"],
    },
    "default": {
        "a+b=c, 1234!": ["a", "+", "b", "=", "c", ",", " ", "123", "4", "!"],
        "it's": ["it", "'", "s"],
    },
}


def pieces(pre: str, text: str) -> list[str]:
    """The text pieces the pre-tokenizer cuts `text` into (ByteLevel's characters mapped back to bytes)."""
    metadata = tiny_gpt2_metadata(pre=pre)
    hf = build_bpe_tokenizer(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"], PRE_TOKENIZERS[pre])
    return [bytes(UNICODE_TO_BYTES[c] for c in piece).decode("utf-8")
            for piece, _ in hf.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("pre, text, expected", [(p, t, e) for p, cases in SPLITS.items() for t, e in cases.items()])
def test_splits_as_llama_cpp_regexes(pre, text, expected):
    assert pieces(pre, text) == expected


def test_llama_bpe_adds_bos_and_ignores_merges_by_default():
    assert PRE_TOKENIZERS["llama-bpe"].add_bos and PRE_TOKENIZERS["llama-bpe"].ignore_merges
    assert not PRE_TOKENIZERS["qwen2"].add_bos and not PRE_TOKENIZERS["qwen2"].ignore_merges


TRICKY = ["Hello world", "I've 12345 apples!!\n\n  ok", "HELLO'S world\r\n\tx", "数字 ١٢٣ and 3.14159",
          "   leading spaces", "emoji 😀😀 end", "a+b=c, 1234!", "don't STOP'LL", "x\n\n\n y"]


@pytest.fixture(scope="module")
def smollm2_vocab_files(tmp_path_factory):
    """Tiny llama models carrying SmolLM2's byte-level vocabulary under each pre-tokenizer name."""
    import os
    if not os.path.exists(SMOLLM2_PATH):
        pytest.skip(f"default model not present at {SMOLLM2_PATH} (run `hybridinfer fetch`): its vocabulary is used")
    import gguf
    from hybridinfer.model_file.gguf_file import GGUFFile
    from tiny_models import random_weights
    source = GGUFFile(SMOLLM2_PATH)
    tokens, merges = source.get("tokenizer.ggml.tokens"), source.get("tokenizer.ggml.merges")
    types = source.get("tokenizer.ggml.token_type")
    folder = tmp_path_factory.mktemp("pre")
    files = {}
    for pre in SPLITS:
        path = folder / f"{pre}.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        for add, value in ((writer.add_block_count, 1), (writer.add_context_length, 64),
                           (writer.add_embedding_length, 64), (writer.add_feed_forward_length, 96),
                           (writer.add_head_count, 4), (writer.add_head_count_kv, 2),
                           (writer.add_rope_dimension_count, 16)):
            add(value)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        for name, value in random_weights(n_layer=1, n_vocab=len(tokens)).items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        files[pre] = path
    return files


@pytest.mark.parametrize("pre", list(SPLITS))
def test_tokenizations_match_llama_cpp(smollm2_vocab_files, pre):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the oracle)")
    from hybridinfer.eval import llamacpp_reference
    from hybridinfer.model_file.gguf_file import GGUFFile
    path = smollm2_vocab_files[pre]
    ours = tokenizer_from_metadata(GGUFFile(str(path)).metadata)
    llm = llamacpp_reference.load(str(path), n_threads=1, n_ctx=64)
    try:
        for text in TRICKY:
            theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ours.encode(text, add_bos=False) == theirs, (pre, text)
    finally:
        llm.close()
