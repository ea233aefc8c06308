"""Calibration text as token chunks: the built-in offline corpus (Python standard library docstrings, see
corpus.py) or the user's text files, tokenized and cut into chunks that each start with BOS."""

from __future__ import annotations

from .corpus import build_corpus
from .files import MAX_CORPUS_BYTES, read_text_file
from ..errors import HybridInferError


def calibration_texts(files: list[str] | None, split: str = "train") -> list[str]:
    """The documents of `files` when given (each file one document), else the built-in corpus's `split`."""
    if not files:
        return build_corpus().split(split)
    return [read_text_file(path, "the corpus file", MAX_CORPUS_BYTES) for path in files]


def token_chunks(tokenizer, texts: list[str], n_tokens: int, chunk_len: int) -> list[list[int]]:
    """About `n_tokens` tokens of `texts` (documents joined by blank lines), as chunks of `chunk_len` tokens
    whose first token is BOS. Fewer tokens come back when the texts are shorter."""
    if n_tokens < 1 or chunk_len < 2:
        raise HybridInferError("the token budget and chunk length must be positive")
    bos = tokenizer.bos_id
    body = chunk_len - 1 if bos is not None else chunk_len
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text + "\n\n", add_bos=False))
        if len(stream) >= n_tokens:
            break
    stream = stream[:n_tokens]
    chunks = [stream[i:i + body] for i in range(0, len(stream), body)]
    chunks = [c for c in chunks if len(c) >= 2]
    if not chunks:
        raise HybridInferError("the calibration text is empty; give a corpus file with some text")
    return [([bos] if bos is not None else []) + c for c in chunks]
