"""Token streams and batches: documents -> one stream of ids -> fixed-length windows.

Every document becomes `<s> ids </s>` (the tokenizer's BOS and EOS) and the documents are concatenated in
corpus order into one stream. Training takes non-overlapping windows of seq_len + 1 tokens (inputs and their next-token targets) in an
order shuffled once per epoch by a seeded generator, so the batch at a given step depends only on
(seed, step): runs that branch from each other see exactly the same data at the same step.
"""

from __future__ import annotations

from typing import Callable

import torch

EncodeDocuments = Callable[[list[str]], list[list[int]]]  # texts -> their ids, without BOS/EOS


def token_stream(encode: EncodeDocuments, documents: list[str], bos_id: int | None, eos_id: int | None) -> torch.Tensor:
    """int64 tensor of `BOS doc EOS` for every document, in order (a missing BOS/EOS id is left out)."""
    ids: list[int] = []
    for document_ids in encode(documents):
        if bos_id is not None:
            ids.append(bos_id)
        ids.extend(document_ids)
        if eos_id is not None:
            ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.int64)


def windows(stream: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """(n_windows, seq_len + 1) non-overlapping windows from the start of the stream (evaluation data)."""
    n_windows = (stream.numel() - 1) // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    starts = torch.arange(n_windows) * seq_len
    return torch.stack([stream[s:s + seq_len + 1] for s in starts.tolist()])


class TrainBatches:
    """batch(step) -> (inputs, targets), each (batch_size, seq_len); epochs reshuffle the windows."""

    def __init__(self, stream: torch.Tensor, seq_len: int, batch_size: int, seed: int):
        self.stream, self.seq_len, self.batch_size, self.seed = stream, seq_len, batch_size, seed
        self.n_windows = (stream.numel() - 1) // seq_len
        if self.n_windows < batch_size:
            raise ValueError(f"the training text has {stream.numel()} tokens, fewer than one batch "
                             f"({batch_size} x {seq_len + 1}); give more text or a smaller batch/sequence length")
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.n_windows, generator=generator)}
        return self._orders[epoch]

    def epochs_at(self, step: int) -> float:
        return step * self.batch_size / self.n_windows

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for sample in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, position = divmod(sample, self.n_windows)
            start = int(self._order(epoch)[position]) * self.seq_len
            rows.append(self.stream[start:start + self.seq_len + 1])
        block = torch.stack(rows)
        return block[:, :-1], block[:, 1:]
