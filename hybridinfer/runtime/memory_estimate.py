"""How much CPU memory a run will hold, estimated from the file before anything is allocated.

A context size the machine cannot hold (`-c 1000000`, or `-c 0` on a file claiming 2^31 positions) is refused
here with the numbers and the largest `-c` that fits, instead of an allocation that ends in MemoryError or the
kernel's OOM killer. The weights count at their size in the file (the packed layout rearranges the same bytes;
the reference backend decodes every weight to float32), the KV cache at its type's bytes per value (`kv_types.py`:
f32 4, f16 2, q8_0 34/32), and the buffers of
one prompt chunk. A TEAL run on the packed backend also holds every projection transposed (`runtime/teal.py`):
those count once more, at their size in the file. What the GPU side of the hybrid runtime holds is its own budget
(`hybrid/placement/memory_model.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model_file.config import ModelConfig
from ..errors import HybridInferError
from ..model_file.gguf_file import GGUFFile
from ..kernels.packed import packed_nbytes
from ..model_file.tensor_shapes import PROJECTIONS, split_name
from .kv_types import DEFAULT_KV_TYPE, KV_TYPES, KVType

GiB = 2**30
DEFAULT_TYPES = (KV_TYPES[DEFAULT_KV_TYPE],) * 2


@dataclass(frozen=True)
class RunMemory:
    weights: int  # bytes
    kv_cache: int
    buffers: int
    transposes: int = 0  # TEAL's transposed projections

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers + self.transposes


def kv_bytes_per_position(config: ModelConfig, cache_types: tuple[KVType, KVType] = DEFAULT_TYPES) -> int:
    """K and V of every layer for one position, in the cache's types (keys', values')."""
    values = config.n_layer * config.n_head_kv * config.head_dim
    return sum(math.ceil(values * t.bytes_per_value) for t in cache_types)


def buffer_bytes(config: ModelConfig, n_ctx: int, chunk: int) -> int:
    """The forward pass's buffers for a chunk of `chunk` tokens (`runtime/run_state.RunState`) and the RoPE tables."""
    c = config
    q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    per_token = 4 * (6 * c.n_embd + 3 * q_rows + 6 * kv_rows + 4 * c.n_ff + c.n_vocab)
    return chunk * per_token + 4 * c.n_head * n_ctx + 2 * 4 * n_ctx * c.rope_dim


def estimate(file: GGUFFile, config: ModelConfig, n_ctx: int, chunk: int, float32_weights: bool,
             transposed: bool = False, cache_types: tuple[KVType, KVType] = DEFAULT_TYPES) -> RunMemory:
    """`transposed`: the run also holds the layers' projections transposed (TEAL on the packed backend);
    `cache_types`: the KV cache's (keys', values')."""
    if float32_weights:
        weights = 4 * sum(t.n_elements for t in file.tensors.values())
    else:
        weights = sum(packed_nbytes(t) for t in file.tensors.values())  # K-quants: their tiles' bytes
    transposes = sum(t.n_bytes for name, t in file.tensors.items()
                     if split_name(name)[0] in PROJECTIONS) if transposed else 0
    return RunMemory(weights, n_ctx * kv_bytes_per_position(config, cache_types), buffer_bytes(config, n_ctx, chunk),
                     transposes)


def available_bytes() -> int | None:
    """MemAvailable (Linux), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require_fits(need: RunMemory, config: ModelConfig, n_ctx: int, available: int | None) -> None:
    """Refuse a run whose estimate exceeds the memory available, suggesting the largest -c that fits."""
    if available is None or need.total <= available:
        return
    per_position = need.kv_cache // max(n_ctx, 1) + 4 * config.n_head + 8 * config.rope_dim
    fixed = need.weights + need.transposes + need.buffers - (4 * config.n_head + 8 * config.rope_dim) * n_ctx
    fits = (available - fixed) // per_position // 256 * 256
    hint = f"use -c {fits} or less" if fits >= 256 else "the weights alone do not fit: use a smaller model"
    raise HybridInferError(
        f"this run needs about {need.total / GiB:.1f} GiB (weights {need.weights / GiB:.1f}, "
        f"{f'their TEAL transposes {need.transposes / GiB:.1f}, ' if need.transposes else ''}KV cache "
        f"{need.kv_cache / GiB:.1f} for -c {n_ctx}, buffers {need.buffers / GiB:.1f}) but {available / GiB:.1f} GiB "
        f"are available; {hint}")


def check_run_memory(file: GGUFFile, config: ModelConfig, n_ctx: int, chunk: int, float32_weights: bool,
                     transposed: bool = False, cache_types: tuple[KVType, KVType] = DEFAULT_TYPES) -> None:
    need = estimate(file, config, n_ctx, min(chunk, n_ctx), float32_weights, transposed, cache_types)
    require_fits(need, config, n_ctx, available_bytes())
