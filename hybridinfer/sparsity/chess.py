"""CHESS's per-neuron scales (He et al., arXiv 2409.01366, channel-wise thresholding), for the FFN activation.

Dropping neuron i of a gated FFN removes act_i * up_i * down[:, i] from the layer's output. CATS keeps the neurons
with the largest |act_i| alone; CHESS weighs |act_i| by what it multiplies, estimated per neuron (channel) on
calibration text, since up_i is not known before its row is read: neuron i is kept when |act_i| * s_i passes the
layer's threshold, with

    s_i = mean over calibration tokens of |up_i . x|

(x the FFN's normed input), the paper's channel-wise statistic of the up projection. Equivalently, each neuron
has its own threshold t / s_i on |act_i|. Weighing s_i by the norm of the neuron's down column too (WINA's factor)
was measured worse on SmolLM2 (docs/sparsity.md). The scales are measured on the dense model with the up weights
as the model file stores them (dequantized to float32) and kept in the sparsity file, so that both backends use
the same ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..model_file.dequantize import dequantize
from ..model_file.tensor_shapes import FFN_NORM, FFN_UP, tensor_name
from ..runtime.activations import run_observed

if TYPE_CHECKING:
    from ..engine import Engine


def neuron_scales(engine: Engine, chunks: list[list[int]],
                  on_chunk: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Per layer, float32 (n_ff,): s_i above, over the dense model's run of `chunks` (token lists)."""
    file, config = engine.file, engine.config
    norms = [torch.from_numpy(np.ascontiguousarray(dequantize(file.tensor(tensor_name(FFN_NORM, i))), np.float32))
             for i in range(config.n_layer)]
    ups = [torch.from_numpy(np.ascontiguousarray(dequantize(file.tensor(tensor_name(FFN_UP, i))), np.float32))
           for i in range(config.n_layer)]  # (n_ff, n_embd)
    sums = torch.zeros((config.n_layer, config.n_ff), dtype=torch.float64)
    counts = np.zeros(config.n_layer, np.int64)

    def observe(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        x = residual.float().reshape(-1, residual.shape[-1])  # (T, n_embd), before ffn_norm
        normed = x * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + config.rms_eps).float() * norms[index]
        sums[index] += (normed @ ups[index].T).abs().sum(0).double()
        counts[index] += x.shape[0]

    run_observed(engine, chunks, observe, on_chunk)
    return [(sums[i].numpy() / max(counts[i], 1)).astype(np.float32) for i in range(config.n_layer)]
