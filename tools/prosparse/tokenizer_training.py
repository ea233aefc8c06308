"""Train a LLaMA-like SentencePiece tokenizer (BPE, byte fallback, unk/bos/eos = 0/1/2) on the training split.

The options follow the LLaMA tokenizer.model: BPE, byte_fallback (every byte has a `<0xNN>` piece, so no
text is ever unknown; a newline becomes `<0x0A>`), digits split one by one, identity normalization, extra
whitespace kept, a dummy prefix space, no pad piece. Training reads every line of every document, in
order, with no sampling or shuffling, so the same corpus gives the same model.
"""

from __future__ import annotations

import io
import os

import sentencepiece as spm

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def train_tokenizer(documents: list[str], vocab_size: int, model_path: str, num_threads: int = 2) -> spm.SentencePieceProcessor:
    """Train on the lines of `documents`, write the model to `model_path` (a tokenizer.model), return it loaded."""
    lines = [line for document in documents for line in document.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=0.9995,
        max_sentence_length=16384,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
        unk_surface=" \u2047 ",
        num_threads=num_threads,
        minloglevel=2,
    )
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with open(model_path, "wb") as handle:
        handle.write(model.getvalue())
    return load_tokenizer(model_path)


def load_tokenizer(model_path: str) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=model_path)
