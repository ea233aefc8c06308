"""Bytes that torch operators allocate while a `PeakAllocation` is active: each new storage an operator returns
(views share their base's and are not counted) is live until its last tensor dies (a finalizer on the storage),
and `peak` is the most bytes live at once. Tensors made outside the block are not counted."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = self.peak = self.total = 0
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            address = storage.data_ptr()
            if address in before or address in self._counted or storage.nbytes() == 0:
                continue
            self._counted.add(address)
            self.live += storage.nbytes()
            self.total += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, address, storage.nbytes())
        return out

    def _freed(self, address: int, nbytes: int) -> None:
        self._counted.discard(address)
        self.live -= nbytes
