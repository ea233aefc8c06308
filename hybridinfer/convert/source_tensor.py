"""One tensor of a checkpoint, listed without its data: what the converter plans with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "F32", "F16", "BF16", "F64"
    n_bytes: int
    load: Callable[[], np.ndarray]  # returns the values as a float32 array of `shape`
