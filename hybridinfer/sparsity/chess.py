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
the same ones. `run_observed` shows the observer every layer once per chunk, so a layer's up rows are dequantized
when it is observed, a block of rows at a time, and dropped after: calibration holds one block in float32, not the
model's up weights, and decodes them again for each chunk. The file's pages of a quantized up are dropped after,
as the engine drops them once it holds its own copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..model_file.dequantize import dequantize, dequantize_rows
from ..model_file.tensor_shapes import FFN_NORM, FFN_UP, tensor_name
from ..model_file.weight_formats import FLOAT_TYPES
from ..reference.model import rms_norm
from ..runtime.activations import run_observed

if TYPE_CHECKING:
    from ..engine import Engine

BLOCK_ELEMENTS = 1 << 22  # up weights dequantized at a time: 16 MiB of float32


def neuron_scales(engine: Engine, chunks: list[list[int]], on_chunk: Callable[[int], None] | None = None,
                  block_elements: int = BLOCK_ELEMENTS) -> list[np.ndarray]:
    """Per layer, float32 (n_ff,): s_i above, over the dense model's run of `chunks` (token lists), with the up
    rows dequantized `block_elements` weights (at least one row) at a time."""
    file, config = engine.file, engine.config
    norms = [torch.from_numpy(np.ascontiguousarray(dequantize(file.tensor(tensor_name(FFN_NORM, i))), np.float32))
             for i in range(config.n_layer)]
    ups = [file.tensor(tensor_name(FFN_UP, i)) for i in range(config.n_layer)]  # (n_ff, n_embd), as stored
    rows = max(1, block_elements // config.n_embd)  # per block
    sums = torch.zeros((config.n_layer, config.n_ff), dtype=torch.float64)
    counts = np.zeros(config.n_layer, np.int64)

    def observe(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        x = residual.float().reshape(-1, residual.shape[-1])  # (T, n_embd), before ffn_norm
        normed = rms_norm(x, norms[index], config.rms_eps)  # (T, n_embd): the FFN's input
        for start in range(0, config.n_ff, rows):
            stop = min(start + rows, config.n_ff)
            up = np.ascontiguousarray(dequantize_rows(ups[index], stop, start), np.float32)  # (stop - start, n_embd)
            sums[index, start:stop] += (normed @ torch.from_numpy(up).T).abs().sum(0).double()
        if ups[index].type not in FLOAT_TYPES:  # its pages, as `GGUFFile.release_copied` drops them
            file.release(ups[index].name)
        counts[index] += x.shape[0]

    run_observed(engine, chunks, observe, on_chunk)
    return [(sums[i].numpy() / max(counts[i], 1)).astype(np.float32) for i in range(config.n_layer)]
