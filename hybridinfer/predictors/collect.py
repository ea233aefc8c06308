"""Collect predictor training data: run the model over corpus tokens and stream, for every layer and token,
the residual before ffn_norm and which FFN neurons fired into memory-mapped files, so that a 7B model's data
need not fit in RAM.

Work directory (rows are layer-major, so one layer's rows are contiguous on disk):
    collection.json         written last (a directory without it is incomplete): shapes, rows per split,
                            the settings and model fingerprint it was collected with
    {split}.residuals.f16   float16 (n_layer, capacity, n_embd): residual stream before ffn_norm
    {split}.masks.bits      uint8 (n_layer, capacity, ceil(n_ff / 8)): act(gate) != 0, np.packbits little-endian
Splits: `train` (fitting), `validation` (early stopping, threshold calibration), `test` (reported metrics).
Each is drawn from the corpus split of the same name (documents are assigned whole, so held-out tokens come
from text never trained on), shuffled with a fixed seed, cut into chunks of `chunk_tokens` tokens that begin
with BOS, and each chunk is evaluated from an empty KV cache.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..text.corpus import Corpus
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint

SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.1  # of the token budget, for each of validation and test
MIN_TOKENS = 64  # per split
FLOAT16_MAX = 65504.0
FORMAT = 1
MANIFEST = "collection.json"


def residuals_file(workdir: str, split: str) -> str:
    return os.path.join(workdir, f"{split}.residuals.f16")


def masks_file(workdir: str, split: str) -> str:
    return os.path.join(workdir, f"{split}.masks.bits")


def packed_width(n_ff: int) -> int:
    return (n_ff + 7) // 8


@dataclass
class Collection:
    """Collected (residual, active mask) rows of one model, per split and layer, on disk."""

    workdir: str
    n_layer: int
    n_embd: int
    n_ff: int
    rows: dict[str, int]  # tokens collected per split
    capacity: dict[str, int]  # rows allocated per split (>= rows)
    settings: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)

    def residuals(self, split: str, layer: int) -> np.ndarray:
        """float16 (rows, n_embd), memory-mapped read-only."""
        data = np.memmap(residuals_file(self.workdir, split), dtype=np.float16, mode="r",
                         shape=(self.n_layer, self.capacity[split], self.n_embd))
        return data[layer, :self.rows[split]]

    def packed_masks(self, split: str, layer: int) -> np.ndarray:
        """uint8 (rows, ceil(n_ff / 8)), memory-mapped read-only."""
        data = np.memmap(masks_file(self.workdir, split), dtype=np.uint8, mode="r",
                         shape=(self.n_layer, self.capacity[split], packed_width(self.n_ff)))
        return data[layer, :self.rows[split]]

    def masks(self, split: str, layer: int) -> np.ndarray:
        """bool (rows, n_ff): True where the neuron fired."""
        return np.unpackbits(self.packed_masks(split, layer), axis=1, count=self.n_ff, bitorder="little").astype(bool)

    def activation_counts(self, split: str, layer: int) -> np.ndarray:
        """int64 (n_ff,): how many of the split's tokens each neuron fired for."""
        counts = np.zeros(self.n_ff, dtype=np.int64)
        packed = self.packed_masks(split, layer)
        for begin in range(0, packed.shape[0], 65536):
            block = np.unpackbits(packed[begin:begin + 65536], axis=1, count=self.n_ff, bitorder="little")
            counts += block.sum(axis=0, dtype=np.int64)
        return counts

    def save(self) -> None:
        with open(os.path.join(self.workdir, MANIFEST), "w", encoding="utf-8") as handle:
            json.dump({"format": FORMAT, **asdict(self), "workdir": None}, handle, indent=1)

    @classmethod
    def open(cls, workdir: str) -> "Collection | None":
        """The complete collection in `workdir`, or None if there is none (or it is unreadable)."""
        try:
            with open(os.path.join(workdir, MANIFEST), encoding="utf-8") as handle:
                record = json.load(handle)
            if record.pop("format") != FORMAT:
                return None
            record["workdir"] = workdir
            collection = cls(**record)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        for split in collection.rows:
            if not (os.path.exists(residuals_file(workdir, split)) and os.path.exists(masks_file(workdir, split))):
                return None
        return collection


def to_torch(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch copy of a (read-only, memory-mapped) array on `device`."""
    return torch.from_numpy(np.array(array)).to(device)


def unpack_bits(packed: torch.Tensor, n_ff: int) -> torch.Tensor:
    """uint8 (B, ceil(n_ff / 8)) packed little-endian -> bool (B, n_ff), on the tensor's device."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (B, bytes, 8)
    return bits.reshape(packed.shape[0], -1)[:, :n_ff].bool()


def token_chunks(documents: Iterable[str], encode: Callable[[str], list[int]], bos_id: int | None,
                 chunk_tokens: int) -> Iterator[list[int]]:
    """Chunks of `chunk_tokens` token ids, each BOS (if the vocabulary has one) then the next tokens of the
    documents, which are concatenated with a blank line between them. The last chunk may be shorter."""
    head = [] if bos_id is None else [bos_id]
    body = chunk_tokens - len(head)
    buffer: list[int] = []
    for document in documents:
        buffer.extend(encode(document + "\n\n"))
        while len(buffer) >= body:
            yield head + buffer[:body]
            buffer = buffer[body:]
    if buffer:
        yield head + buffer


def split_budgets(tokens: int) -> dict[str, int]:
    """Tokens per split: HELD_OUT_FRACTION each for validation and test, the rest for training."""
    held_out = max(MIN_TOKENS, round(tokens * HELD_OUT_FRACTION))
    train = tokens - 2 * held_out
    if train < MIN_TOKENS:
        raise HybridInferError(f"--tokens {tokens} is too few; give at least {3 * MIN_TOKENS + 1}")
    return {"train": train, "validation": held_out, "test": held_out}


def documents_by_split(corpus: Corpus, seed: int = 0) -> dict[str, list[str]]:
    """The corpus splits, each shuffled with a fixed seed. A held-out split that is empty (a small user
    corpus) takes every tenth training document instead."""
    documents = {split: list(corpus.split(split)) for split in SPLITS}
    for index, split in enumerate(("validation", "test")):
        if not documents[split]:
            documents[split] = documents["train"][index::10]
            documents["train"] = [d for i, d in enumerate(documents["train"]) if i % 10 != index]
    for split in SPLITS:
        random.Random(seed).shuffle(documents[split])
    return documents


def collect(model, chunks: dict[str, Iterable[list[int]]], budgets: dict[str, int], workdir: str,
            settings: dict | None = None, fingerprint: Fingerprint | None = None,
            progress: Callable[[int], None] | None = None) -> Collection:
    """Run `model` (a hybridinfer.reference.model.Transformer) over each split's chunks until its budget of tokens is
    collected or the chunks run out, writing the observed rows to `workdir`."""
    config = model.config
    n_layer, n_embd, n_ff = config.n_layer, config.n_embd, config.n_ff
    os.makedirs(workdir, exist_ok=True)
    manifest = os.path.join(workdir, MANIFEST)
    if os.path.exists(manifest):
        os.unlink(manifest)  # what follows overwrites the data it described
    row_bytes = n_layer * (2 * n_embd + packed_width(n_ff))
    needed = sum(budgets.values()) * row_bytes
    free = shutil.disk_usage(workdir).free
    if needed > free:
        raise HybridInferError(f"collecting {sum(budgets.values())} tokens needs {needed / 2**30:.1f} GiB in {workdir} "
                               f"but only {free / 2**30:.1f} GiB is free; lower --tokens or choose --workdir elsewhere")
    model_id = {"shape": fingerprint.shape, "probe": list(fingerprint.probe)} if fingerprint else {}
    collection = Collection(workdir, n_layer, n_embd, n_ff, rows={}, capacity=dict(budgets),
                            settings=dict(settings or {}), fingerprint=model_id)
    for split, budget in budgets.items():
        collection.rows[split] = _collect_split(model, chunks[split], budget, workdir, split, progress)
        if collection.rows[split] < MIN_TOKENS:
            raise HybridInferError(f"the corpus gave only {collection.rows[split]} {split} tokens (at least "
                                   f"{MIN_TOKENS} are needed); add text with --corpus")
    collection.save()
    return collection


def _collect_split(model, chunks: Iterable[list[int]], budget: int, workdir: str, split: str,
                   progress: Callable[[int], None] | None) -> int:
    config = model.config
    residuals = np.memmap(residuals_file(workdir, split), dtype=np.float16, mode="w+",
                          shape=(config.n_layer, budget, config.n_embd))
    masks = np.memmap(masks_file(workdir, split), dtype=np.uint8, mode="w+",
                      shape=(config.n_layer, budget, packed_width(config.n_ff)))
    position = 0

    def observe(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        end = position + residual.shape[0]
        rows = residual.detach().float().cpu().numpy()  # (T, n_embd)
        residuals[index, position:end] = np.clip(rows, -FLOAT16_MAX, FLOAT16_MAX)
        active = (activation != 0).cpu().numpy()  # (T, n_ff)
        masks[index, position:end] = np.packbits(active, axis=1, bitorder="little")

    model.observers.append(observe)
    try:
        for chunk in chunks:
            chunk = chunk[:budget - position]
            if len(chunk) > model.n_ctx:
                raise HybridInferError(f"chunks of {len(chunk)} tokens do not fit the context of {model.n_ctx}")
            model.forward(torch.tensor(chunk, dtype=torch.long), 0)
            position += len(chunk)
            if progress is not None:
                progress(len(chunk))
            if position >= budget:
                break
    finally:
        model.observers.remove(observe)
    residuals.flush()
    masks.flush()
    return position


def collect_from_corpus(engine, corpus: Corpus, tokens: int, workdir: str, chunk_tokens: int = 256,
                        corpus_label: str = "", progress: Callable[[int], None] | None = None,
                        reuse: bool = True) -> tuple[Collection, bool]:
    """Collect `tokens` tokens (split by `split_budgets`) for `engine`'s model from `corpus`. Returns the
    collection and whether it was reused: a complete collection in `workdir` made for the same model with
    the same settings is reused instead of evaluated again."""
    chunk_tokens = min(chunk_tokens, engine.n_ctx)
    budgets = split_budgets(tokens)
    fingerprint = Fingerprint.of_model(engine.file, engine.config)
    settings = {"tokens": tokens, "chunk_tokens": chunk_tokens, "corpus": corpus_label,
                "activation": f"{engine.config.activation}:{engine.config.activation_threshold}"}
    if reuse:
        previous = Collection.open(workdir)
        if previous is not None and previous.settings == settings and previous.capacity == budgets \
                and previous.fingerprint == {"shape": fingerprint.shape, "probe": list(fingerprint.probe)}:
            return previous, True
    documents = documents_by_split(corpus)
    tokenizer = engine.tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, parse_special=False)

    chunks = {split: token_chunks(documents[split], encode, tokenizer.bos_id, chunk_tokens) for split in SPLITS}
    return collect(engine.model, chunks, budgets, workdir, settings, fingerprint, progress), False
