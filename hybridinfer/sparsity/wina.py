"""WINA's column norms (arXiv 2505.19427): for each TEAL site of each layer, the L2 norm of every column of the
weight its input multiplies, ||W[:, i]||_2, by which WINA weighs the input entry x_i (|x_i| * ||W[:, i]||_2
against the site's threshold instead of TEAL's |x_i|). Where one input feeds several projections (Q, K and V;
gate and up) the column is that of the stacked matrix: the norm over all the rows the entry scales.

Read from the model file's weights as stored (dequantized to float32), the same for both backends.
"""

from __future__ import annotations

import numpy as np

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import (ATTN_K, ATTN_OUTPUT, ATTN_Q, ATTN_V, FFN_DOWN_T, FFN_GATE, FFN_UP, down_name,
                                        split_name, tensor_name)


def column_norms(file: GGUFFile, config: ModelConfig) -> list[tuple[np.ndarray, ...]]:
    """Per layer, per site (`thresholds.SITES["wina"]`), float32 (input width,): the norms of the columns of the
    stacked Q/K/V (n_embd,), the output projection (n_head * head_dim,), the stacked gate/up (n_embd,) and the
    down projection (n_ff,)."""
    def squares(part: str, layer: int) -> np.ndarray:  # (in,): the sum over rows of each column's squares
        values = dequantize(file.tensor(tensor_name(part, layer)))
        return np.einsum("oi,oi->i", values, values, dtype=np.float64)

    norms = []
    for i in range(config.n_layer):
        down = dequantize(file.tensor(down_name(file, i)))
        if split_name(down_name(file, i))[0] != FFN_DOWN_T:
            down = down.T  # (n_ff, n_embd): row j is the column of neuron j
        layer = (squares(ATTN_Q, i) + squares(ATTN_K, i) + squares(ATTN_V, i), squares(ATTN_OUTPUT, i),
                 squares(FFN_GATE, i) + squares(FFN_UP, i), np.einsum("ji,ji->j", down, down, dtype=np.float64))
        norms.append(tuple(np.sqrt(s).astype(np.float32) for s in layer))
    return norms
