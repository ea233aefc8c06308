"""Seeded weight values for tools/synth_checkpoint.py: every tensor from its own random stream, in row chunks, so
that a full-size checkpoint is generated with bounded memory and identical values whatever the sharding."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np

_CHUNK_ELEMENTS = 16 * 1024 * 1024  # 64 MB of float32 per generated chunk


def default_weight_std(hidden_size: int, size: str) -> float:
    """0.02 at published shapes; at reduced width scaled by sqrt(4096 / hidden) so that projections keep
    the O(1) outputs (and non-uniform attention) of a 4096-wide model."""
    return 0.02 if size == "full" else 0.02 * math.sqrt(4096 / hidden_size)


def tensor_chunks(name: str, shape: tuple[int, ...], seed: int, std: float, gate_bias: float = 0.0,
                  profile=None) -> Iterator[np.ndarray]:
    """Seeded float32 values of one tensor as row blocks of at most _CHUNK_ELEMENTS elements.

    Each tensor has its own stream (seed, crc32(name)), so values do not depend on sharding or format.
    Norm weights are 1 + std * N(0,1); other tensors std * N(0,1). With `gate_bias` b != 0 hidden channel 0
    becomes a bias channel (as the massive-activation channels of trained LLMs): embedding column 0 holds
    about half of a typical residual's energy, no layer writes to it (o_proj and down_proj row 0 = 0), and
    gate_proj column 0 = b * std, so gate pre-activations shift by roughly b times their spread. Measured
    (relullama-7b, small): b = -1.2 leaves 10% / 21% / 28% / 26% of ReLU neurons active in layers 0-3
    (b = 0: 50%); the effect fades with depth as the residual grows. The channel also holds ~99.9% of the
    embeddings' energy, so the residual barely varies across tokens (measured: 0.1% of its energy) and most
    neurons fire for every token or for none.
    With `profile` (see SparsityProfile; gate_bias must then be 0) embeddings, gate_proj and the bias channel
    follow the profile instead; the other tensors are the same as without it.
    """
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    rows = shape[0]
    row_elems = math.prod(shape[1:])
    block = max(1, _CHUNK_ELEMENTS // max(row_elems, 1))
    is_norm = len(shape) == 1
    gate = profile.gate_generator(name, shape, seed) if profile is not None else None
    for start in range(0, rows, block):
        n = min(block, rows - start)
        chunk = rng.standard_normal((n, *shape[1:]), dtype=np.float32)
        chunk *= np.float32(std)
        if is_norm:
            chunk += np.float32(1.0)
        elif profile is not None:
            profile.apply(name, chunk, start, std, gate)
        elif gate_bias:
            _apply_bias_channel(name, chunk, start, std, gate_bias)
        yield chunk


def _apply_bias_channel(name: str, chunk: np.ndarray, start: int, std: float, gate_bias: float) -> None:
    if name == "model.embed_tokens.weight":
        d = chunk.shape[1]
        chunk[:, 0] = std * std * d * math.sqrt(d)  # ~ residual rms (std^2 d) * sqrt(d): half the energy
    elif name.endswith(("o_proj.weight", "down_proj.weight")) and start == 0:
        chunk[0] = 0.0
    elif name.endswith("gate_proj.weight"):
        chunk[:, 0] = gate_bias * std



def to_stored(chunk: np.ndarray, dtype: str) -> np.ndarray:
    """Chunk converted to the stored dtype (bf16 via torch: round to nearest even), as raw numpy."""
    if dtype == "float32":
        return chunk
    if dtype == "float16":
        return chunk.astype(np.float16)
    import torch
    return torch.from_numpy(chunk).to(torch.bfloat16).view(torch.int16).numpy()
