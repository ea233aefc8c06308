"""`Placement`: what the hybrid runtime puts on the GPU side, as data (from a split file, a split solved for a
budget, or -ngl N); `runtime/build.py` assembles the decoder from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import HybridInferError
from ...model_file.config import ModelConfig
from .split_file import Split


@dataclass
class Placement:
    """What the GPU side holds: the attention of `gpu_layers` (with KV cache and predictor), the whole FFN of
    `dense_layers` (-ngl), the hot neurons of the others' FFNs (their split FFNs), and maybe the output
    projection."""

    gpu_layers: list[int] = field(default_factory=list)
    dense_layers: set[int] = field(default_factory=set)
    hot: dict[int, np.ndarray] = field(default_factory=dict)
    output_on_gpu: bool = False
    split: Split | None = None

    @property
    def empty(self) -> bool:
        return not self.gpu_layers

    @property
    def split_ffn_layers(self) -> list[int]:
        """The GPU layers whose FFN is split between the sides (hot neurons on the GPU; they need the sparse
        FFN's transposed down projection)."""
        return [i for i in self.gpu_layers if i not in self.dense_layers]

    @classmethod
    def of_split(cls, split: Split) -> Placement:
        return cls(list(split.gpu_layers), set(), {i: split.hot[i] for i in split.gpu_layers}, split.output_on_gpu,
                   split)

    @classmethod
    def of_gpu_layers(cls, n_gpu_layers: int, config: ModelConfig) -> Placement:
        """llama.cpp's -ngl: the last N layers whole on the GPU, and the output projection when N > n_layer."""
        if n_gpu_layers < 0:
            raise HybridInferError(f"-ngl/--n-gpu-layers must be 0 or more, got {n_gpu_layers}")
        layers = list(range(max(0, config.n_layer - n_gpu_layers), config.n_layer))
        return cls(layers, set(layers), {}, n_gpu_layers > config.n_layer)
