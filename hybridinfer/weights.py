"""Load a model's weights from a GGUF file as float32 torch tensors for the reference forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .dequantize import dequantize
from .errors import HybridInferError
from .gguf_file import GGUFFile


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
    q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = model.tensor(name)
        if tensor.shape != shape:
            raise HybridInferError(
                f"{model.path}: tensor {name} has shape {tensor.shape}, expected {shape} from the metadata")
        return torch.from_numpy(dequantize(tensor))

    def down(i: int) -> torch.Tensor:
        if f"blk.{i}.ffn_down_t.weight" in model.tensors:  # PowerInfer: row j is neuron j's output vector
            return get(f"blk.{i}.ffn_down_t.weight", (c.n_ff, c.n_embd)).T.contiguous()
        return get(f"blk.{i}.ffn_down.weight", (c.n_embd, c.n_ff))

    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=get(p + "attn_norm.weight", (c.n_embd,)),
            attn_q=get(p + "attn_q.weight", (q_rows, c.n_embd)),
            attn_k=get(p + "attn_k.weight", (kv_rows, c.n_embd)),
            attn_v=get(p + "attn_v.weight", (kv_rows, c.n_embd)),
            attn_output=get(p + "attn_output.weight", (c.n_embd, q_rows)),
            ffn_norm=get(p + "ffn_norm.weight", (c.n_embd,)),
            ffn_gate=get(p + "ffn_gate.weight", (c.n_ff, c.n_embd)),
            ffn_up=get(p + "ffn_up.weight", (c.n_ff, c.n_embd)),
            ffn_down=down(i),
        ))
    token_embd = get("token_embd.weight", (c.n_vocab, c.n_embd))
    output = token_embd if c.tied_embeddings else get("output.weight", (c.n_vocab, c.n_embd))
    return ModelWeights(token_embd, layers, get("output_norm.weight", (c.n_embd,)), output)
