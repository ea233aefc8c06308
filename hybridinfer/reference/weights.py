"""Load a model's weights from a GGUF file as float32 torch tensors for the reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import DOWN_T, down_name, require_tensors


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # (n_embd,)
    attn_q: torch.Tensor  # (n_head * head_dim, n_embd), rows permuted for adjacent-pair RoPE (GGUF convention)
    attn_k: torch.Tensor  # (n_head_kv * head_dim, n_embd), same permutation
    attn_v: torch.Tensor  # (n_head_kv * head_dim, n_embd)
    attn_output: torch.Tensor  # (n_embd, n_head * head_dim)
    ffn_norm: torch.Tensor  # (n_embd,)
    ffn_gate: torch.Tensor  # (n_ff, n_embd): row i is neuron i's gate weights
    ffn_up: torch.Tensor  # (n_ff, n_embd)
    ffn_down: torch.Tensor  # (n_embd, n_ff)


@dataclass
class ModelWeights:
    token_embd: torch.Tensor  # (n_vocab, n_embd)
    layers: list[LayerWeights]
    output_norm: torch.Tensor  # (n_embd,)
    output: torch.Tensor  # (n_vocab, n_embd); the same tensor as token_embd when embeddings are tied


def load_weights(model: GGUFFile, config: ModelConfig) -> ModelWeights:
    c = config
    require_tensors(model, config)

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(dequantize(model.tensor(name)))  # shapes: checked by tensor_shapes.require_tensors

    def down(i: int) -> torch.Tensor:
        name = down_name(model, i)
        return get(name).T.contiguous() if name.endswith(DOWN_T) else get(name)  # PowerInfer: rows are neurons

    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=get(p + "attn_norm.weight"),
            attn_q=get(p + "attn_q.weight"),
            attn_k=get(p + "attn_k.weight"),
            attn_v=get(p + "attn_v.weight"),
            attn_output=get(p + "attn_output.weight"),
            ffn_norm=get(p + "ffn_norm.weight"),
            ffn_gate=get(p + "ffn_gate.weight"),
            ffn_up=get(p + "ffn_up.weight"),
            ffn_down=down(i),
        ))
    token_embd = get("token_embd.weight")
    output = token_embd if c.tied_embeddings else get("output.weight")
    return ModelWeights(token_embd, layers, get("output_norm.weight"), output)
