"""Turn generated token ids into text one token at a time, never emitting half a UTF-8 character.

A character may span several tokens (SentencePiece byte fallback spells an emoji as four `<0xNN>` tokens;
byte-level BPE tokens can end mid-character), so the bytes of an incomplete trailing sequence are held back
until the tokens that complete it arrive. Everything `add` and `flush` return, joined, equals
`tokenizer.decode(ids, skip_special)` for the same ids.
"""

from __future__ import annotations

import codecs

from .tokenizer import Tokenizer


class StreamingDetokenizer:
    """Incremental `Tokenizer.decode`: `add(id)` returns the newly completed text, `flush()` the rest."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True, strip_leading_space: bool = True):
        """`strip_leading_space` as in `Tokenizer.decode`: False when the ids continue earlier text."""
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._drop_space = strip_leading_space and tokenizer.strips_space_prefix
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chunks: list[str] = []

    def add(self, token_id: int) -> str:
        """Text completed by `token_id` ("" while a character is still incomplete)."""
        piece, self._drop_space = self.tokenizer.render_token(
            token_id, skip_special=self.skip_special, drop_space=self._drop_space)
        return self._emit(self._utf8.decode(piece, final=False))

    def flush(self) -> str:
        """Whatever is held back; bytes of an unfinished character become U+FFFD."""
        return self._emit(self._utf8.decode(b"", final=True))

    @property
    def text(self) -> str:
        """All text returned so far."""
        return "".join(self._chunks)

    def _emit(self, text: str) -> str:
        if text:
            self._chunks.append(text)
        return text
