"""Vocabularies for tokenizer tests, as GGUF metadata dicts: a SentencePiece BPE model trained on the spot
(LLaMA-like settings), a tiny hand-made byte-level BPE vocabulary, and a plain-Python transcription of
llama.cpp's SPM merge loop to check against."""

from __future__ import annotations

import functools
import heapq
import inspect
import io
import os

import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as sp_model

from hybridinfer.default_model import default_model_path
from hybridinfer.text.tokenizer_bpe import BYTES_TO_UNICODE

# where `make test` fetched the default model (the same place conftest.smollm_path looks)
SMOLLM2_PATH = os.environ.get("HYBRIDINFER_TEST_MODEL") or str(default_model_path())

EXTRA_TRAINING_LINES = [
    "Un café au lait, s'il vous plaît: the résumé of a naïve coöperative.",
    "Numbers such as 12345, 3.14159 and 2024-01-01 appear in logs.",
    "    indented code: for i in range(10): print(i)",
]


def stdlib_docstring_lines(limit: int = 800) -> list[str]:
    """Non-empty lines of docstrings from a few standard-library modules: local, varied English text."""
    import argparse, collections, functools as ft, itertools, json, pathlib, re, string, textwrap  # noqa: E401
    lines: list[str] = []
    for module in (argparse, collections, ft, itertools, json, pathlib, re, string, textwrap, inspect):
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) or ""
            lines.extend(line for line in doc.splitlines() if line.strip())
            if len(lines) >= limit:
                return lines + EXTRA_TRAINING_LINES
    return lines + EXTRA_TRAINING_LINES


@functools.lru_cache(maxsize=1)
def trained_spm_model() -> bytes:
    """Serialized SentencePiece BPE model trained like LLaMA's (byte fallback, identity normalizer)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(stdlib_docstring_lines()), model_writer=model, model_type="bpe", vocab_size=800,
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    return model.getvalue()


def spm_processor() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_proto=trained_spm_model())


def spm_metadata(**overrides) -> dict:
    """The trained model's vocabulary as a LLaMA GGUF carries it (token types share SentencePiece's numbers)."""
    proto = sp_model.ModelProto()
    proto.ParseFromString(trained_spm_model())
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p.piece for p in proto.pieces],
        "tokenizer.ggml.scores": [p.score for p in proto.pieces],
        "tokenizer.ggml.token_type": [int(p.type) for p in proto.pieces],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    metadata.update(overrides)
    return metadata


def tiny_gpt2_metadata(pre: str | None = "gpt-2") -> dict:
    """A byte-level vocabulary: 256 byte characters, a few merges, <|endoftext|> and <|im_end|> as control."""
    tokens = ["<|endoftext|>", "<|im_end|>"] + [BYTES_TO_UNICODE[b] for b in range(256)]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }
    if pre is not None:
        metadata["tokenizer.ggml.pre"] = pre
    return metadata


def llama_cpp_spm_fragment(tokens: list[str], scores: list[float], text: str) -> list[int]:
    """llama.cpp's SPM tokenization of one already space-escaped fragment, written out plainly: merge the
    adjacent pair forming the best-scored token (ties: leftmost), then byte-fall-back what is not a token."""
    ids = {t: i for i, t in enumerate(tokens)}
    symbols = list(text)
    alive = [True] * len(symbols)
    nxt = list(range(1, len(symbols))) + [-1]
    prv = list(range(-1, len(symbols) - 1))
    queue: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0 and symbols[left] + symbols[right] in ids:
            merged = symbols[left] + symbols[right]
            heapq.heappush(queue, (-scores[ids[merged]], left, right, len(merged)))

    for i in range(1, len(symbols)):
        push(i - 1, i)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        if not (alive[left] and alive[right]) or len(symbols[left]) + len(symbols[right]) != size:
            continue
        symbols[left] += symbols[right]
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    out: list[int] = []
    for i, symbol in enumerate(symbols):
        if not alive[i]:
            continue
        if symbol in ids:
            out.append(ids[symbol])
        else:
            out.extend(ids[f"<0x{b:02X}>"] for b in symbol.encode("utf-8"))
    return out
