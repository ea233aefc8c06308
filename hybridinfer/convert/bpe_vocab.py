"""A byte-level BPE tokenizer.json (Llama 3, Qwen2, Qwen2.5, Qwen3) -> GGUF vocabulary keys, as llama.cpp's
converter writes them (`_set_vocab_gpt2`: tokenizer.ggml.model "gpt2").

- tokens: every id below config.json's vocab_size; ids the tokenizer lacks are `[PAD{id}]` of type UNUSED;
  added tokens are CONTROL when marked special or when they look special (llama.cpp's `does_token_look_special`:
  `<|...|>`, `<｜...｜>`, `<unused...>`, `<pad>`, `<mask>`, ...), else USER_DEFINED (with "▁" read as a space);
  the others NORMAL;
- tokenizer.ggml.pre: llama.cpp recognises a pre-tokenizer by hashing the ids of a test text; here the
  tokenizer.json's pre-tokenizer itself is recognised (`PRE_TOKENIZERS`: the Split regex of Llama 3's or Qwen2's
  tokenizer, then byte-level, with the BPE model's ignore_merges as llama.cpp applies it for that name), so that a
  tokenizer llama.cpp would split differently is refused instead of written with a wrong name;
- merges, bos/eos/unk/pad ids, add_bos/add_eos and the chat template: gguf-py's `SpecialVocab`, the code
  llama.cpp's converter calls (tokenizer_config.json, the post-processor's template, config.json's ids).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import GGUFWriter, TokenType

from ..errors import HybridInferError
from .hf_config import HFModelSpec
from .json_file import read_json_object, shown

# tokenizer.json's pre-tokenizer regex -> (tokenizer.ggml.pre, the BPE model's ignore_merges llama.cpp uses for it)
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    _WORDS + r"\p{N}{1,3}" + _REST: ("llama-bpe", True),  # Llama 3.x: digits in runs of up to 3
    _WORDS + r"\p{N}" + _REST: ("qwen2", False),  # Qwen2, Qwen2.5, Qwen3: every digit alone
}
NORMALIZERS = (None, "NFC")  # Qwen's tokenizers normalize to NFC, as llama.cpp does not; the texts rarely differ
SPECIAL_LOOKING = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")  # llama.cpp's does_token_look_special
SPECIAL_BRACKETS = (("<|", "|>"), ("<｜", "｜>"), ("<unused", ">"))


@dataclass
class BpeVocab:
    tokens: list[str]
    types: list[int]
    pre: str  # tokenizer.ggml.pre
    special: gguf.SpecialVocab  # merges, special ids, add_bos/add_eos, chat template

    def write(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        self.special.add_to_gguf(writer, quiet=True)


def read_bpe_vocab(hf_dir: Path, spec: HFModelSpec) -> BpeVocab:
    path = hf_dir / "tokenizer.json"
    tokenizer = read_json_object(path)
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise HybridInferError(f"{path} is not a BPE tokenizer (model.type must be \"BPE\" with a vocab); "
                               "only byte-level BPE and SentencePiece (tokenizer.model) vocabularies are converted")
    pre = _pre_tokenizer(tokenizer, path)
    by_id, added = _tokens_by_id(model["vocab"], tokenizer.get("added_tokens") or [], path)
    if by_id and max(by_id) >= spec.n_vocab:
        raise HybridInferError(f"{path} has token id {max(by_id)} but config.json says vocab_size {spec.n_vocab}; "
                               "the tokenizer does not belong to this checkpoint")
    tokens, types = [], []
    for token_id in range(spec.n_vocab):
        text = by_id.get(token_id)
        if text is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(TokenType.UNUSED)
        elif token_id in added:
            special = added[token_id] or text in SPECIAL_LOOKING or any(
                text.startswith(head) and text.endswith(tail) for head, tail in SPECIAL_BRACKETS)
            tokens.append(text if special else text.replace("\u2581", " "))
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
    special = _special_vocab(hf_dir, spec.n_vocab)
    return BpeVocab(tokens, [int(t) for t in types], pre, special)


def _pre_tokenizer(tokenizer: dict, path: Path) -> str:
    """The tokenizer.ggml.pre of a recognised pre-tokenizer; anything else is refused in one line."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    regex = None
    if isinstance(steps, list) and len(steps) == 2 and all(isinstance(step, dict) for step in steps):
        split, byte_level = steps
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and byte_level.get("type") == "ByteLevel" and byte_level.get("use_regex") is False
                and not byte_level.get("add_prefix_space")):
            pattern = split.get("pattern")
            regex = pattern.get("Regex") if isinstance(pattern, dict) else None
    known = PRE_TOKENIZERS.get(regex)
    if known is None:
        raise HybridInferError(f"{path}: its pre-tokenizer {shown(pre, 60)} is not one this converter recognises "
                               "(Llama 3's or Qwen2's byte-level split)")
    name, ignore_merges = known
    if bool(tokenizer["model"].get("ignore_merges", False)) != ignore_merges:
        raise HybridInferError(f"{path}: model.ignore_merges is {not ignore_merges}, but llama.cpp's {name!r} "
                               f"pre-tokenizer takes it as {ignore_merges}; the tokenizer is not a recognised one")
    normalizer = tokenizer.get("normalizer")
    kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
    if kind not in NORMALIZERS:
        raise HybridInferError(f"{path}: its normalizer {shown(normalizer)} is not one llama.cpp applies (none, or "
                               "Qwen's NFC); the tokenizer is not a recognised one")
    return name


def _tokens_by_id(vocab: dict, added_tokens: list, path: Path) -> tuple[dict[int, str], dict[int, bool]]:
    """(id -> text over the model's vocabulary and the added tokens, added id -> whether it is marked special)."""
    try:
        by_id = {token_id: text for text, token_id in vocab.items()}
        added = {entry["id"]: bool(entry.get("special")) for entry in added_tokens}
        by_id.update({entry["id"]: entry["content"] for entry in added_tokens})
    except (AttributeError, KeyError, TypeError):
        raise HybridInferError(f"{path}: its added_tokens are malformed; download it again") from None
    if not all(type(i) is int and i >= 0 and isinstance(text, str) for i, text in by_id.items()):
        raise HybridInferError(f"{path}: a token has an id that is not a non-negative integer, or non-string text; "
                               "download it again")
    return by_id, added


def _special_vocab(hf_dir: Path, n_vocab: int) -> gguf.SpecialVocab:
    """gguf-py's reading of the merges, special ids, add_bos/add_eos flags and chat template (after checking that
    the files it reads are JSON objects, so that a damaged one is a one-line error here)."""
    for name in ("tokenizer_config.json", "chat_template.json"):
        if (hf_dir / name).exists():
            read_json_object(hf_dir / name)
    try:
        with _quiet(logging.getLogger("gguf.vocab")):  # its notes on post-processor templates it only half parses
            special = gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=n_vocab)
    except (ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
        raise HybridInferError(f"{hf_dir}: its tokenizer files are malformed ({exc}); download them again") from None
    if not special.merges:
        raise HybridInferError(f"{hf_dir / 'tokenizer.json'} has no merges; a byte-level BPE tokenizer needs them")
    return special


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
