"""What the hybrid runtime keeps on the GPU, in bytes, for a model, a context size and a device.

Everything but the cold FFN neurons lives on the GPU side, as tensors of `element_bytes` each (float16 on
CUDA, float32 on the CPU stand-in device):

    attention   per layer: attn_norm, attn_q, attn_k, attn_v, attn_output; ffn_norm
    output      output_norm and the output projection (token embeddings stay in CPU memory: one row per
                token is looked up and copied over)
    predictors  fc1 and fc2 of every layer, when predictors are used (float32: 4 bytes per parameter)
    kv_cache    keys and values: 2 x n_layer x n_ctx x n_head_kv x head_dim elements
    workspace   activation buffers: logits (n_vocab), attention scores (n_head x n_ctx), FFN buffers
                (2 x n_ff), residual/norm buffers (4 x n_embd), all float32, plus a fixed 64 MiB margin
                for the allocator
    per neuron  a hot neuron costs its gate row, up row and transposed down row: 3 x n_embd elements
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import ModelConfig

WORKSPACE_MARGIN = 64 << 20


@dataclass(frozen=True)
class GPUMemoryModel:
    attention: int
    output: int
    predictors: int
    kv_cache: int
    workspace: int
    neuron_bytes: int  # one hot neuron
    element_bytes: int
    n_ctx: int

    @property
    def fixed(self) -> int:
        """Bytes on the GPU besides the hot neurons."""
        return self.attention + self.output + self.predictors + self.kv_cache + self.workspace

    def as_dict(self) -> dict:
        return {**asdict(self), "fixed": self.fixed}

    @classmethod
    def build(cls, config: ModelConfig, n_ctx: int, element_bytes: int, predictor_params: int = 0):
        c, e = config, element_bytes
        q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        per_layer = (2 * q_rows * c.n_embd + 2 * kv_rows * c.n_embd) * e + 2 * c.n_embd * 4
        workspace = 4 * (c.n_vocab + c.n_head * n_ctx + 2 * c.n_ff + 4 * c.n_embd) + WORKSPACE_MARGIN
        return cls(
            attention=c.n_layer * per_layer,
            output=c.n_vocab * c.n_embd * e + c.n_embd * 4,
            predictors=predictor_params * 4,
            kv_cache=2 * c.n_layer * n_ctx * kv_rows * e,
            workspace=workspace,
            neuron_bytes=3 * c.n_embd * e,
            element_bytes=e,
            n_ctx=n_ctx,
        )
