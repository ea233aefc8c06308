"""A checkpoint's SentencePiece `tokenizer.model` (plus tokenizer_config.json) as GGUF tokenizer keys,
the way llama.cpp's converter writes them (tokenizer.ggml.model = "llama")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sentencepiece
from gguf import GGUFWriter, TokenType
from sentencepiece import sentencepiece_model_pb2

from ..errors import HybridInferError
from .hf_config import HFModelSpec
from .json_file import read_json_object, shown


@dataclass
class SentencePieceVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str | None = None

    def write(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(self.tokens)
        writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        writer.add_add_space_prefix(self.add_space_prefix)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(hf_dir: Path, spec: HFModelSpec) -> SentencePieceVocab:
    path = hf_dir / "tokenizer.model"
    if not path.exists():
        raise HybridInferError(f"{hf_dir} has no tokenizer.model or tokenizer.json; the tokenizer is required")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise HybridInferError(f"{path} is not a SentencePiece model ({exc})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())

    n_pieces = processor.vocab_size()
    if n_pieces > spec.n_vocab:
        raise HybridInferError(f"tokenizer.model has {n_pieces} pieces but config.json says vocab_size {spec.n_vocab}")
    tokens, scores, types = [], [], []
    for i in range(n_pieces):
        tokens.append(processor.IdToPiece(i))
        scores.append(processor.GetScore(i))
        types.append(_token_type(processor, i))
    tokenizer_config = _optional_json(hf_dir / "tokenizer_config.json")
    for token_id, added in _added_tokens(hf_dir, tokenizer_config).items():
        if token_id < n_pieces:
            types[token_id] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        elif token_id < spec.n_vocab:
            while len(tokens) < token_id:
                _pad(tokens, scores, types)
            tokens.append(added["content"])
            scores.append(-10000.0)
            types.append(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    while len(tokens) < spec.n_vocab:  # llama.cpp pads the vocabulary up to the embedding rows
        _pad(tokens, scores, types)

    special = {"unk": processor.unk_id(), "bos": processor.bos_id(), "eos": processor.eos_id(), "pad": processor.pad_id()}
    if spec.bos_token_id is not None:
        special["bos"] = int(spec.bos_token_id)
    if spec.eos_token_id is not None:
        special["eos"] = int(spec.eos_token_id)
    special = {kind: i for kind, i in special.items() if 0 <= i < spec.n_vocab}
    return SentencePieceVocab(
        tokens, scores, [int(t) for t in types],
        add_space_prefix=proto.normalizer_spec.add_dummy_prefix,
        special_ids=special,
        add_bos=bool(tokenizer_config.get("add_bos_token", True)),
        add_eos=bool(tokenizer_config.get("add_eos_token", False)),
        chat_template=_chat_template(tokenizer_config),
    )


def _token_type(processor, i: int) -> TokenType:
    if processor.IsUnknown(i):
        return TokenType.UNKNOWN
    if processor.IsControl(i):
        return TokenType.CONTROL
    if processor.IsUnused(i):
        return TokenType.UNUSED
    if processor.IsByte(i):
        return TokenType.BYTE
    return TokenType.NORMAL


def _pad(tokens: list, scores: list, types: list) -> None:
    tokens.append(f"[PAD{len(tokens)}]")
    scores.append(-10000.0)
    types.append(TokenType.UNUSED)


def _optional_json(path: Path) -> dict:
    return read_json_object(path) if path.exists() else {}


def _added_tokens(hf_dir: Path, tokenizer_config: dict) -> dict[int, dict]:
    """Token id -> {"content": str, "special": bool} from tokenizer_config.json and added_tokens.json."""
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    listed = _optional_json(hf_dir / "added_tokens.json")
    try:
        added = {int(i): {"content": info["content"], "special": bool(info.get("special"))}
                 for i, info in decoder.items()}
        for content, token_id in listed.items():
            added.setdefault(int(token_id), {"content": content, "special": False})
    except (AttributeError, KeyError, TypeError, ValueError):
        raise HybridInferError(f"{hf_dir}: the added tokens in tokenizer_config.json or added_tokens.json are "
                               "malformed; download those files again") from None
    if any(token_id < 0 or not isinstance(info["content"], str) for token_id, info in added.items()):
        raise HybridInferError(f"{hf_dir}: an added token in tokenizer_config.json has a negative id or non-string "
                               "content; download it again")
    return added


def _chat_template(tokenizer_config: dict) -> str | None:
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise HybridInferError(
            f"tokenizer_config.json: chat_template must be a string, got {shown(template)}; download it again")
    return template or None
