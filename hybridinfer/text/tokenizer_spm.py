"""SentencePiece-style vocabularies (`tokenizer.ggml.model == "llama"`: LLaMA-2, ProSparse, ...), as llama.cpp's
llm_tokenizer_spm tokenizes them.

llama.cpp's algorithm is SentencePiece's BPE encoder: split the text into characters, repeatedly merge the
adjacent pair whose concatenation is a vocabulary piece of highest score (ties: leftmost first), and spell
characters that end up outside the vocabulary as byte tokens `<0xNN>`. So we build a SentencePiece model from
the GGUF vocabulary and let the sentencepiece library run that loop:

* model_type BPE, byte_fallback on, pieces/scores/ids exactly the GGUF's;
* normalizer "identity" that only escapes " " to U+2581, with add_dummy_prefix and remove_extra_whitespaces
  off: we put the leading space in ourselves, as llama.cpp does, before every text fragment that starts the
  text or follows a special token (when tokenizer.ggml.add_space_prefix, default true);
* every piece llama.cpp may merge into is declared NORMAL: llama.cpp looks merges up among *all* token texts,
  while SentencePiece would skip control and user-defined pieces. Only the unknown piece and the byte pieces
  keep their own types, which the byte fallback needs.
"""

from __future__ import annotations

import re
from typing import Any

import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as sp_model

from ..errors import HybridInferError
from .tokenizer import BYTE, UNKNOWN, Tokenizer

SPACE_SYMBOL = "\u2581"  # how SentencePiece writes a space inside pieces
BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")  # the spelling llama.cpp looks up for byte fallback


class SentencePieceTokenizer(Tokenizer):
    """A `tokenizer.ggml.model == "llama"` vocabulary: scores, SentencePiece pieces, byte fallback."""

    def __init__(self, metadata: dict[str, Any]):
        super().__init__(metadata, default_bos=1, default_eos=2, default_add_bos=True)
        if "tokenizer.ggml.token_type" not in metadata:  # no types: byte tokens are known by their text only
            for i, text in enumerate(self.tokens):
                if BYTE_PIECE.fullmatch(text):
                    self.token_types[i] = BYTE
        scores = metadata.get("tokenizer.ggml.scores")
        if scores is None:
            scores = [0.0] * self.vocab_size
        if len(scores) != self.vocab_size:
            raise HybridInferError(f"the GGUF vocabulary is inconsistent: {self.vocab_size} tokens but {len(scores)} "
                                   "scores; re-convert the model")
        self.unk_id = self._special_id(metadata, "tokenizer.ggml.unknown_token_id", 0)
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
        self.strips_space_prefix = self.add_space_prefix
        self._processor = build_sentencepiece_processor(self.tokens, scores, self.token_types)

    def _encode_fragment(self, text: str, after_special: bool) -> list[int]:
        if self.add_space_prefix and after_special:
            text = " " + text
        ids = self._processor.encode(text)
        if any(i >= self.vocab_size for i in ids):  # the unknown piece added past a vocabulary that has none
            ids = [i if i < self.vocab_size else self.unk_id for i in ids]
        return ids

    def _normal_bytes(self, text: str) -> bytes:
        return text.replace(SPACE_SYMBOL, " ").encode("utf-8")

    def _byte_token_bytes(self, text: str) -> bytes:
        try:  # llama.cpp reads the two hex digits of "<0xNN>"
            return bytes([int(text[3:5], 16)])
        except ValueError:
            return b""


def build_sentencepiece_processor(tokens: list[str], scores: list[float],
                                  token_types: list[int]) -> sentencepiece.SentencePieceProcessor:
    """A SentencePieceProcessor whose BPE encoding of a fragment (spaces not yet escaped) is llama.cpp's."""
    proto = sp_model.ModelProto()
    proto.trainer_spec.model_type = sp_model.TrainerSpec.BPE
    # SentencePiece's byte fallback needs all 256 byte pieces; without them an unknown character becomes <unk>
    byte_fallback = len({text for text in tokens if BYTE_PIECE.fullmatch(text)}) == 256
    proto.trainer_spec.byte_fallback = byte_fallback
    proto.trainer_spec.bos_id = -1
    proto.trainer_spec.eos_id = -1
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True

    unk_id = None
    seen: set[str] = set()
    for i, (text, score, kind) in enumerate(zip(tokens, scores, token_types)):
        piece = proto.pieces.add()
        if text in seen:  # SentencePiece refuses duplicates; the later copy becomes unreachable
            piece.piece, piece.type = f"<hybridinfer-duplicate-{i}>", sp_model.ModelProto.SentencePiece.CONTROL
            continue
        seen.add(text)
        piece.piece, piece.score = text, float(score)
        if kind == UNKNOWN and unk_id is None:
            piece.type, unk_id = sp_model.ModelProto.SentencePiece.UNKNOWN, i
        elif byte_fallback and BYTE_PIECE.fullmatch(text):
            piece.type = sp_model.ModelProto.SentencePiece.BYTE
        elif kind == UNKNOWN:  # SentencePiece allows one unknown piece
            piece.type = sp_model.ModelProto.SentencePiece.CONTROL
        else:  # normal, control, user-defined, unused: llama.cpp merges into any of them
            piece.type = sp_model.ModelProto.SentencePiece.NORMAL
    if unk_id is None:  # SentencePiece needs an unknown piece: add one past the vocabulary
        piece = proto.pieces.add()
        piece.piece = next(t for t in ("<unk>", "<hybridinfer-unk>") if t not in seen)
        piece.type = sp_model.ModelProto.SentencePiece.UNKNOWN
        unk_id = len(tokens)
    proto.trainer_spec.unk_id = unk_id

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto.SerializeToString())
    except (RuntimeError, OSError) as exc:
        raise HybridInferError(f"the GGUF's SentencePiece vocabulary cannot be loaded ({exc}); re-convert the model") \
            from None
    return processor

