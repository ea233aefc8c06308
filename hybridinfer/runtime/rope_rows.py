"""NEOX RoPE as the kernels' adjacent-pair RoPE, by reordering rows at load.

llama.cpp's converter permutes LLaMA's Q and K rows so that RoPE rotates adjacent pairs (2j, 2j + 1) of each head;
qwen2, qwen3 and gemma3 files keep Hugging Face's order, which llama.cpp rotates as pairs (j, j + rope_dim / 2)
("NEOX"). Moving row j + rope_dim / 2 of each head next to row j (in Q and K alike, with their biases and per-head
norm weights) makes the kernels' rotation the NEOX one; attention scores are unchanged, since a query and a key
are permuted the same way. V and the output projection are untouched. The reference (`reference/model.py`) rotates
NEOX pairs directly, so the tests compare the two.
"""

from __future__ import annotations

import numpy as np

from ..model_file.config import ModelConfig


def pair_order(head_dim: int, rope_dim: int) -> np.ndarray:
    """(head_dim,) int64: row k of a reordered head is row pair_order[k] of the file's: 2j <- j, 2j + 1 <- j + half
    for j < rope_dim / 2; rows past rope_dim stay."""
    half = rope_dim // 2
    order = np.arange(head_dim)
    order[0:rope_dim:2] = np.arange(half)
    order[1:rope_dim:2] = np.arange(half) + half
    return order


def head_rows(config: ModelConfig, n_heads: int) -> np.ndarray | None:
    """(n_heads * head_dim,) int64: the rows of a Q or K matrix (or bias) in the kernels' order, or None when the
    file's order is already theirs (not NEOX)."""
    c = config
    if not c.rope_neox:
        return None
    return (np.arange(n_heads)[:, None] * c.head_dim + pair_order(c.head_dim, c.rope_dim)[None, :]).reshape(-1)


def head_vector(config: ModelConfig, values: np.ndarray) -> np.ndarray:
    """A per-head weight (head_dim,) (a Q or K norm) in the kernels' order."""
    return values if not config.rope_neox else np.ascontiguousarray(values[pair_order(config.head_dim,
                                                                                      config.rope_dim)])
