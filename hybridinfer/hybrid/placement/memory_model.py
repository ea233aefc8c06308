"""What the hybrid runtime keeps on the GPU, in bytes, for a model file, a context size and a device.

Weights live on the GPU side as the file's own bytes (Q4_0/Q4_1/Q8_0 blocks, F16/BF16/F32 values; a type the
GPU kernels do not read, Q5_x included, is decoded to F32 there, 4 bytes a weight). Per part:

    layer       a GPU layer's attention: attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm (and the biases,
                head norms and post-block norms its architecture has), its KV cache
                (2 x n_ctx x n_head_kv x head_dim elements of `kv_element_bytes`: float16 on CUDA, float32 on the
                CPU stand-in) and, with predictors, its predictor (fc1 and fc2 as Q8_0, as the CPU side packs them)
    neuron      a hot neuron of a GPU layer: its gate row, up row and row of the transposed down projection
    dense_ffn   (-ngl) a layer's whole FFN: gate, up and down
    output      output_norm and the output projection (token embeddings stay in CPU memory: one row per token
                is looked up there)
    workspace   activation buffers (logits, attention scores, FFN buffers, all float32) plus a fixed 64 MiB
                margin for the allocator and the kernels' scratch

PowerInfer's order when the budget is small: attention layers first (the last layers, as llama.cpp offloads
them), then the output projection once every layer is on the GPU, then hot neurons of GPU layers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ...errors import HybridInferError
from ...model_file.config import ModelConfig
from ...model_file.gguf_file import GGUFFile, GGUFTensor
from ...model_file.tensor_shapes import (ATTN_K, ATTN_OUTPUT, ATTN_Q, ATTN_V, FFN_GATE, FFN_UP, OUTPUT, TOKEN_EMBD,
                                        down_name, tensor_name)
from ...model_file.weight_formats import CPU_NATIVE_TYPES, FORMATS, GPU_NATIVE_TYPES, Q8_0

WORKSPACE_MARGIN = 64 << 20


def device_bytes(tensor: GGUFTensor) -> int:
    """Bytes of a file tensor on the GPU side: its own bytes, or F32 for a type the GPU kernels do not read."""
    return tensor.n_bytes if tensor.type in GPU_NATIVE_TYPES else 4 * tensor.n_elements


def down_t_bytes(down: GGUFTensor) -> int:
    """Bytes on the GPU side of a split layer's down projection: its hot rows are the CPU side's transposed down
    projection (`runtime/weights.py`): in the format the CPU kernels transpose the file's into (a K-quant: its
    registry `transpose_type`), or F32 where they do not read it or its rows are not whole 32-blocks."""
    target = FORMATS[FORMATS[down.type].transpose_type] if down.type in CPU_NATIVE_TYPES else None
    if target is None or (target.quantized and down.shape[0] % target.block_size):
        return 4 * down.n_elements
    return down.n_elements // target.block_size * target.block_bytes


def row_bytes(tensor: GGUFTensor) -> int:
    """Device bytes of one row of a 2-D weight (one neuron of ffn_gate / ffn_up)."""
    return device_bytes(tensor) // tensor.shape[0]


def predictor_bytes(rank: int, n_embd: int, n_ff: int) -> int:
    """One layer's predictor packed as Q8_0 (a width that is not a multiple of 32 stays F32)."""
    def matrix(rows: int, cols: int) -> int:
        return rows * cols // Q8_0.block_size * Q8_0.block_bytes if cols % Q8_0.block_size == 0 else rows * cols * 4
    return matrix(rank, n_embd) + matrix(n_ff, rank)


@dataclass(frozen=True)
class GPUMemoryModel:
    layer: list[int]  # per layer: attention weights, norms, KV cache and predictor
    neuron: list[int]  # per layer: one hot neuron (gate row + up row + down_t row)
    dense_ffn: list[int]  # per layer: the whole FFN (-ngl)
    output: int
    workspace: int
    kv_element_bytes: int
    n_ctx: int

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def build(cls, model: GGUFFile, config: ModelConfig, n_ctx: int, kv_element_bytes: int,
              predictor_ranks: list[int] | None = None):
        c = config
        kv_rows = c.n_head_kv * c.head_dim
        layers, neurons, dense = [], [], []
        for i in range(c.n_layer):
            def tensor(part: str) -> GGUFTensor:
                return model.tensor(tensor_name(part, i))
            down = model.tensor(down_name(model, i))
            attention = sum(device_bytes(tensor(part)) for part in (ATTN_Q, ATTN_K, ATTN_V, ATTN_OUTPUT))
            kv = 2 * n_ctx * kv_rows * kv_element_bytes
            predictor = predictor_bytes(predictor_ranks[i], c.n_embd, c.n_ff) if predictor_ranks else 0
            layers.append(attention + 2 * c.n_embd * 4 + architecture_vector_bytes(c) + kv + predictor)
            ffn = [tensor(FFN_GATE), tensor(FFN_UP), down]
            neurons.append((device_bytes(ffn[0]) + device_bytes(ffn[1]) + down_t_bytes(down)) // c.n_ff)
            dense.append(sum(device_bytes(t) for t in ffn))
        output = model.tensors.get(OUTPUT) or model.tensor(TOKEN_EMBD)
        workspace = 4 * (c.n_vocab + c.n_head * n_ctx + 4 * c.n_ff + 8 * c.n_embd) + WORKSPACE_MARGIN
        return cls(layers, neurons, dense, device_bytes(output) + c.n_embd * 4, workspace, kv_element_bytes, n_ctx)


def architecture_vector_bytes(c: ModelConfig) -> int:
    """A GPU layer's float32 vectors beyond LLaMA's two norms: Q/K/V biases, Q/K head norms, post-block norms."""
    biases = (c.n_head + 2 * c.n_head_kv) * c.head_dim if c.attention_bias else 0
    return 4 * (biases + (2 * c.head_dim if c.qk_norm else 0) + (2 * c.n_embd if c.post_norms else 0))


GPU_KV_ENV = "HYBRIDINFER_GPU_KV"  # "f16" or "f32": the GPU side's KV cache type, whatever the device


def kv_element_bytes_for(device: str) -> int:
    """Bytes per KV cache element on the GPU side: float16 on CUDA, float32 on the CPU stand-in, unless
    $HYBRIDINFER_GPU_KV says "f16" or "f32" (the exactness tests compare float32 caches on CUDA too)."""
    chosen = os.environ.get(GPU_KV_ENV)
    if chosen not in (None, "", "f16", "f32"):
        raise HybridInferError(f"${GPU_KV_ENV} is {chosen!r}: choose f16 or f32 (the GPU side's KV cache type)")
    if chosen:
        return 2 if chosen == "f16" else 4
    return 2 if str(device).startswith("cuda") else 4
