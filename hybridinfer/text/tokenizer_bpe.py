"""Byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM2, LLaMA-3, Qwen2, StarCoder, ...), as
llama.cpp's llm_tokenizer_bpe tokenizes them.

A text fragment is cut by the regexes llama.cpp uses for the vocabulary's `tokenizer.ggml.pre` (each regex
splits every piece left by the previous one, keeping matches and gaps), the UTF-8 bytes of each piece are
spelled with GPT-2's byte-to-character table, and the merges (ranked by their order in
`tokenizer.ggml.merges`) are applied. The `tokenizers` library runs all of that; special tokens are cut out
beforehand by `Tokenizer._partition`, as in llama.cpp.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from ..errors import HybridInferError
from .tokenizer import Tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes stand for themselves, the others for characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTES_TO_UNICODE: dict[int, str] = _bytes_to_unicode()
UNICODE_TO_BYTES: dict[str, int] = {char: byte for byte, char in BYTES_TO_UNICODE.items()}

# llama.cpp's pre-tokenizer regexes (llm_tokenizer_bpe), applied in order.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PORO_REGEX = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
CJK_RUN_REGEX = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

DEFAULT_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]")
STARCODER_REGEXES = (r"\p{N}", GPT2_REGEX)  # every digit on its own, then GPT-2's rule


class PreTokenizer(NamedTuple):
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a token is taken whole (llama.cpp ignore_merges)
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token


PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer(DEFAULT_REGEXES),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "gigachat", "roberta-bpe", "jina-es", "jina-de",
                     "jina-v1-en", "jina-v2-es", "jina-v2-de", "jina-v2-code"), PreTokenizer((GPT2_REGEX,))),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"),
                    PreTokenizer((LLAMA3_REGEX,), ignore_merges=True, add_bos=True)),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((LLAMA3_REGEX,))),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
                    PreTokenizer(STARCODER_REGEXES)),
    **dict.fromkeys(("qwen2", "stablelm2", "megrez"), PreTokenizer((QWEN2_REGEX,))),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, r"[0-9][0-9][0-9]")),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_RUN_REGEX, r"\p{N}")),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), PreTokenizer((PORO_REGEX,))),
    "viking": PreTokenizer((PORO_REGEX, r"\p{N}")),
}


def pre_tokenizer_for(name: str | None) -> PreTokenizer:
    """llama.cpp's pre-tokenizer for a `tokenizer.ggml.pre` value (absent: "default")."""
    if name is None or name == "":
        return PRE_TOKENIZERS["default"]
    if name not in PRE_TOKENIZERS:
        raise HybridInferError(f"unsupported tokenizer.ggml.pre {name!r}; supported pre-tokenizers: "
                               f"{', '.join(sorted(PRE_TOKENIZERS))}")
    return PRE_TOKENIZERS[name]


class ByteLevelBPETokenizer(Tokenizer):
    """A `tokenizer.ggml.model == "gpt2"` vocabulary: byte-level tokens, ranked merges, a regex pre-tokenizer."""

    def __init__(self, metadata: dict[str, Any]):
        self.pre_tokenizer_name = metadata.get("tokenizer.ggml.pre") or "default"
        pre = pre_tokenizer_for(metadata.get("tokenizer.ggml.pre"))
        super().__init__(metadata, default_bos=None, default_eos=None, default_add_bos=pre.add_bos)
        merges = metadata.get("tokenizer.ggml.merges")
        if merges is None:
            raise HybridInferError("the GGUF's gpt2 vocabulary has no tokenizer.ggml.merges; re-convert the model")
        self._hf = build_bpe_tokenizer(self.tokens, merges, pre)

    def _encode_fragment(self, text: str, after_special: bool) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def _normal_bytes(self, text: str) -> bytes:
        out = bytearray()
        for char in text:
            byte = UNICODE_TO_BYTES.get(char)
            if byte is None:  # not a byte-level character: keep its UTF-8
                out += char.encode("utf-8")
            else:
                out.append(byte)
        return bytes(out)


def build_bpe_tokenizer(tokens: list[str], merges: list[str], pre: PreTokenizer) -> HFTokenizer:
    """A `tokenizers` BPE with the GGUF's ids and merge ranks and llama.cpp's pre-tokenizer regexes."""
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        vocab[text] = i  # a duplicated text keeps its last id, like llama.cpp's token_to_id
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        cut = merge.find(" ", 1)  # the first space after the first character, as llama.cpp splits
        if cut < 0:
            continue
        left, right = merge[:cut], merge[cut + 1:]
        if left in vocab and right in vocab and left + right in vocab:
            pairs.append((left, right))
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre.ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf
