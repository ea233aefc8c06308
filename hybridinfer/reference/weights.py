"""Load a model's weights from a GGUF file as float32 torch tensors for the reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import (ATTN_K, ATTN_K_NORM, ATTN_NORM, ATTN_OUTPUT, ATTN_POST_NORM, ATTN_Q,
                                        ATTN_Q_NORM, ATTN_V, FFN_DOWN_T, FFN_GATE, FFN_NORM, FFN_POST_NORM, FFN_UP,
                                        OUTPUT, OUTPUT_NORM, TOKEN_EMBD, bias_name, down_name, require_tensors,
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
    # what some architectures add (`tensor_shapes.architecture_shapes`); None where the model has none
    attn_q_bias: torch.Tensor | None = None  # (n_head * head_dim,)  qwen2
    attn_k_bias: torch.Tensor | None = None  # (n_head_kv * head_dim,)
    attn_v_bias: torch.Tensor | None = None  # (n_head_kv * head_dim,)
    attn_q_norm: torch.Tensor | None = None  # (head_dim,)  qwen3, gemma3
    attn_k_norm: torch.Tensor | None = None  # (head_dim,)
    post_attention_norm: torch.Tensor | None = None  # (n_embd,)  gemma3
    post_ffw_norm: torch.Tensor | None = None  # (n_embd,)


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

    def extras(i: int) -> dict[str, torch.Tensor]:
        found = {}
        if c.attention_bias:
            found.update(attn_q_bias=get(bias_name(ATTN_Q, i)), attn_k_bias=get(bias_name(ATTN_K, i)),
                         attn_v_bias=get(bias_name(ATTN_V, i)))
        if c.qk_norm:
            found.update(attn_q_norm=get(tensor_name(ATTN_Q_NORM, i)), attn_k_norm=get(tensor_name(ATTN_K_NORM, i)))
        if c.post_norms:
            found.update(post_attention_norm=get(tensor_name(ATTN_POST_NORM, i)),
                         post_ffw_norm=get(tensor_name(FFN_POST_NORM, i)))
        return found

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
            **extras(i),
        ))
    token_embd = get(TOKEN_EMBD)
    output = token_embd if c.tied_embeddings else get(OUTPUT)
    return ModelWeights(token_embd, layers, get(OUTPUT_NORM), output)
