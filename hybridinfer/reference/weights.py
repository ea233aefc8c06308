"""Load a model's weights from a GGUF file as float32 torch tensors for the reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import (ATTN_K, ATTN_NORM, ATTN_OUTPUT, ATTN_Q, ATTN_V, FFN_DOWN_T, FFN_GATE, FFN_NORM,
                                        FFN_UP, OUTPUT, OUTPUT_NORM, TOKEN_EMBD, down_name, require_tensors,
                                        split_name, tensor_name)


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
        transposed = split_name(name)[0] == FFN_DOWN_T  # PowerInfer's layout: rows are neurons
        return get(name).T.contiguous() if transposed else get(name)

    layers = []
    for i in range(c.n_layer):
        layers.append(LayerWeights(
            attn_norm=get(tensor_name(ATTN_NORM, i)),
            attn_q=get(tensor_name(ATTN_Q, i)),
            attn_k=get(tensor_name(ATTN_K, i)),
            attn_v=get(tensor_name(ATTN_V, i)),
            attn_output=get(tensor_name(ATTN_OUTPUT, i)),
            ffn_norm=get(tensor_name(FFN_NORM, i)),
            ffn_gate=get(tensor_name(FFN_GATE, i)),
            ffn_up=get(tensor_name(FFN_UP, i)),
            ffn_down=down(i),
        ))
    token_embd = get(TOKEN_EMBD)
    output = token_embd if c.tied_embeddings else get(OUTPUT)
    return ModelWeights(token_embd, layers, get(OUTPUT_NORM), output)
