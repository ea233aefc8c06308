"""The tokenizer interface shared by every GGUF vocabulary, and `tokenizer_from_metadata`, which picks one.

Behaviour follows llama.cpp (src/llama-vocab.cpp): GGUF token types, special-token partitioning of the text
before tokenization, BOS/EOS defaults and the end-of-generation (EOG) token detection. The vocabulary-specific
parts (how a plain-text fragment becomes ids, how a normal or byte token becomes bytes) live in
`tokenizer_spm.py` (SentencePiece, `tokenizer.ggml.model == "llama"`) and `tokenizer_bpe.py` (byte-level BPE,
`"gpt2"`).
"""

from __future__ import annotations

from typing import Any

from ..errors import HybridInferError

# GGUF token types (gguf.TokenType); SentencePiece's ModelProto uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Tokens llama.cpp cuts out of the text before tokenizing: control and unknown ones only when the caller
# parses special tokens, user-defined ones always.
PARTITIONED_TYPES = frozenset({CONTROL, USER_DEFINED, UNKNOWN})
# Tokens rendered as empty text unless the caller asks for special tokens (llama.cpp token_to_piece).
HIDDEN_TYPES = frozenset({CONTROL, UNKNOWN})

# Texts llama.cpp treats as end of generation (and forces to control type) whatever the vocabulary.
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>")
# Fill-in-the-middle pad/repo/separator tokens, also EOG in llama.cpp: metadata key, then the texts it looks for.
FIM_EOG_TOKENS = (
    ("tokenizer.ggml.fim_pad_token_id", ("<|fim_pad|>", "<fim-pad>", "<PAD>")),
    ("tokenizer.ggml.fim_rep_token_id", ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>")),
    ("tokenizer.ggml.fim_sep_token_id", ("<|file_sep|>",)),
)
END_OF_SEQUENCE_TEXT = "</s>"  # EOS of LLaMA-style vocabularies; EOG wherever it is present


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary.

    Subclasses set `strips_space_prefix` and implement `_encode_fragment` (plain text -> ids) and
    `_normal_bytes` / `_byte_token_bytes` (what a normal or byte token shows).
    """

    vocab_size: int
    tokens: list[str]  # token text as stored in the GGUF
    token_types: list[int]  # GGUF token type of each token (after llama.cpp's EOG overrides)
    bos_id: int | None
    eos_id: int | None
    add_bos: bool  # whether encode() prepends BOS by default (tokenizer.ggml.add_bos_token)
    eog_ids: frozenset[int]  # ids that end generation
    strips_space_prefix: bool = False  # SPM with add_space_prefix: the space encode adds is dropped on decode

    def __init__(self, metadata: dict[str, Any], *, default_bos: int | None, default_eos: int | None,
                 default_add_bos: bool):
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            raise HybridInferError("the GGUF has no tokenizer.ggml.tokens (no vocabulary); "
                                   "use a model file that includes its tokenizer")
        # llama.cpp renames empty tokens so every token has a distinct, non-empty text
        self.tokens = [str(text) if text else f"[EMPTY_{i}]" for i, text in enumerate(tokens)]
        self.vocab_size = len(self.tokens)
        types = metadata.get("tokenizer.ggml.token_type")
        if types is None:
            types = [NORMAL] * self.vocab_size
        if len(types) != self.vocab_size:
            raise HybridInferError(f"the GGUF vocabulary is inconsistent: {self.vocab_size} tokens but {len(types)} "
                                   "token types; re-convert the model")
        self.token_types = [int(t) for t in types]
        self._id_by_text = {text: i for i, text in enumerate(self.tokens)}  # a duplicated text maps to its last id

        self.bos_id = self._special_id(metadata, "tokenizer.ggml.bos_token_id", default_bos)
        self.eos_id = self._special_id(metadata, "tokenizer.ggml.eos_token_id", default_eos)
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos))
        self.eog_ids = self._find_eog_ids(metadata)
        self._partitioned = sorted(
            (i for i, kind in enumerate(self.token_types) if kind in PARTITIONED_TYPES),
            key=lambda i: -len(self.tokens[i].encode("utf-8")))  # longest first, as llama.cpp
        self._piece_cache: dict[int, bytes] = {}

    # ---- public interface -------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (None: the vocabulary's default). With `parse_special`,
        texts of control tokens (e.g. "<|im_start|>") become their ids; user-defined tokens always do."""
        if add_bos is None:
            add_bos = self.add_bos
        ids: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise HybridInferError("this vocabulary has no BOS token; tokenize without add_bos")
            ids.append(self.bos_id)
        after_special = True  # the first fragment is treated like one following a special token
        for fragment in self._partition(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                after_special = True
            else:
                ids.extend(self._encode_fragment(fragment, after_special))
                after_special = False
        return ids

    def decode(self, ids: list[int], skip_special: bool = True, strip_leading_space: bool = True) -> str:
        """Text of `ids`; control tokens are left out when `skip_special`. With `strip_leading_space` (SPM only)
        the space that encoding put before the first text is dropped; pass False to decode a continuation."""
        out = bytearray()
        drop_space = strip_leading_space and self.strips_space_prefix
        for token_id in ids:
            piece, drop_space = self.render_token(token_id, skip_special=skip_special, drop_space=drop_space)
            out += piece
        return out.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes `token_id` adds to the output: b"" for control tokens, one byte for a byte token."""
        return self.piece_bytes(token_id, render_special=False)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def token_id(self, text: str) -> int | None:
        """Id of the token whose stored text is `text`, or None."""
        return self._id_by_text.get(text)

    # ---- rendering, shared by decode() and the streaming detokenizer -------------------------------------------

    def piece_bytes(self, token_id: int, render_special: bool) -> bytes:
        """Bytes of one token as llama.cpp's token_to_piece renders it (no space stripping)."""
        if not 0 <= token_id < self.vocab_size:
            raise HybridInferError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        kind = self.token_types[token_id]
        if kind in HIDDEN_TYPES:
            return self.tokens[token_id].encode("utf-8") if render_special else b""
        cached = self._piece_cache.get(token_id)
        if cached is None:
            if kind == USER_DEFINED:
                cached = self.tokens[token_id].encode("utf-8")
            elif kind == NORMAL:
                cached = self._normal_bytes(self.tokens[token_id])
            elif kind == BYTE:
                cached = self._byte_token_bytes(self.tokens[token_id])
            else:  # unused or undefined types render as nothing, as in llama.cpp
                cached = b""
            self._piece_cache[token_id] = cached
        return cached

    def render_token(self, token_id: int, *, skip_special: bool, drop_space: bool) -> tuple[bytes, bool]:
        """Bytes `token_id` shows in decoded text, and the next `drop_space` state.

        `drop_space` says the next text piece loses one leading space: the space SPM encoding adds at the start
        and after every special token (shown or skipped), so that decode inverts encode.
        """
        piece = self.piece_bytes(token_id, render_special=not skip_special)
        if self.token_types[token_id] in PARTITIONED_TYPES:
            return piece, self.strips_space_prefix
        if drop_space and piece.startswith(b" "):
            piece = piece[1:]
        return piece, False

    # ---- for subclasses ---------------------------------------------------------------------------------------

    def _encode_fragment(self, text: str, after_special: bool) -> list[int]:
        raise NotImplementedError

    def _normal_bytes(self, text: str) -> bytes:
        raise NotImplementedError

    def _byte_token_bytes(self, text: str) -> bytes:
        return b""  # llama.cpp renders byte tokens only for SentencePiece vocabularies

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _special_id(self, metadata: dict[str, Any], key: str, default: int | None) -> int | None:
        value = metadata.get(key)
        if value is not None and 0 <= int(value) < self.vocab_size:
            return int(value)
        return default if default is not None and default < self.vocab_size else None

    def _find_eog_ids(self, metadata: dict[str, Any]) -> frozenset[int]:
        """llama.cpp's EOG set: FIM pad/repo/sep, tokens with EOG texts (forced to control type), EOS, EOT, EOM."""
        eog: set[int] = set()
        for key, texts in FIM_EOG_TOKENS:
            found = self._special_id(metadata, key, None)
            if found is None:
                found = next((self._id_by_text[t] for t in texts if t in self._id_by_text), None)
            if found is not None:
                eog.add(found)
        for text in EOG_TEXTS:
            found = self._id_by_text.get(text)
            if found is not None:
                eog.add(found)
                self.token_types[found] = CONTROL
        if END_OF_SEQUENCE_TEXT in self._id_by_text:
            eog.add(self._id_by_text[END_OF_SEQUENCE_TEXT])
        for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            found = self._special_id(metadata, key, None)
            if found is not None:
                eog.add(found)
        if self.eos_id is not None:
            eog.add(self.eos_id)
        return frozenset(eog)

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split `text` into plain-text fragments and special-token ids (llama.cpp tokenizer_st_partition):
        each special token, longest first, is cut out of the fragments still holding text."""
        fragments: list[str | int] = [text] if text else []
        for token_id in self._partitioned:
            if not parse_special and self.token_types[token_id] in HIDDEN_TYPES:
                continue
            special = self.tokens[token_id]
            if not any(isinstance(f, str) and special in f for f in fragments):
                continue
            split: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or special not in fragment:
                    split.append(fragment)
                    continue
                for n, part in enumerate(fragment.split(special)):
                    if n:
                        split.append(token_id)
                    if part:
                        split.append(part)
            fragments = split
        return fragments
