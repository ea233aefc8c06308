"""`tokenizer_from_metadata`: the tokenizer a GGUF's `tokenizer.*` metadata describes, after checking that
metadata's types (a corrupt or hostile file is refused in one line naming the key)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import HybridInferError
from .tokenizer import Tokenizer
from .tokenizer_bpe import ByteLevelBPETokenizer
from .tokenizer_spm import SentencePieceTokenizer

# the value types tokenizer metadata must have: (what the error says, a check of one value)
_IS_STR = ("a string", lambda v: isinstance(v, str))
_IS_ID = ("a token id (an integer)", lambda v: isinstance(v, int) and not isinstance(v, bool))
_IS_BOOL = ("true or false", lambda v: isinstance(v, bool))
METADATA_TYPES = {
    "tokenizer.ggml.model": _IS_STR, "tokenizer.ggml.pre": _IS_STR, "tokenizer.chat_template": _IS_STR,
    "tokenizer.ggml.add_bos_token": _IS_BOOL, "tokenizer.ggml.add_eos_token": _IS_BOOL,
    "tokenizer.ggml.add_space_prefix": _IS_BOOL,
    "tokenizer.ggml.tokens": ("an array of strings", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)),
    "tokenizer.ggml.merges": ("an array of strings", lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v)),
    "tokenizer.ggml.token_type": ("an array of integers", lambda v: isinstance(v, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in v)),
    "tokenizer.ggml.scores": ("an array of finite numbers", lambda v: isinstance(v, list) and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in v)),
}


def check_tokenizer_metadata(metadata: dict[str, Any]) -> None:
    """One line naming the first `tokenizer.*` key whose value has the wrong type (a corrupt or hostile file)."""
    for key, (expected, check) in METADATA_TYPES.items():
        if key in metadata and not check(metadata[key]):
            value = metadata[key]
            shown = f"an array of {len(value)} items" if isinstance(value, list) else f"{type(value).__name__} {value!r:.40}"
            raise HybridInferError(f"metadata {key} is {shown}, expected {expected}; the file is corrupt")
    for key, value in metadata.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id") and not _IS_ID[1](value):
            raise HybridInferError(f"metadata {key} is {value!r:.40}, expected {_IS_ID[0]}; the file is corrupt")


def tokenizer_from_metadata(metadata: dict[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF's metadata describes, chosen by `tokenizer.ggml.model`."""
    check_tokenizer_metadata(metadata)
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return SentencePieceTokenizer(metadata)
    if model == "gpt2":
        return ByteLevelBPETokenizer(metadata)
    if model is None:
        raise HybridInferError("the GGUF has no tokenizer.ggml.model key, so no tokenizer; use a model file that "
                               "includes its vocabulary")
    raise HybridInferError(f"unsupported tokenizer.ggml.model {model!r}; supported: 'llama' (SentencePiece) and "
                           "'gpt2' (byte-level BPE)")
