"""Hugging Face tensor names -> GGUF tensor names, and llama.cpp's Q/K row permutation."""

from __future__ import annotations

import re

import numpy as np

from ..model_file.tensor_shapes import (ATTN_K, ATTN_NORM, ATTN_OUTPUT, ATTN_Q, ATTN_V, FFN_DOWN, FFN_GATE, FFN_NORM,
                                        FFN_UP, OUTPUT, OUTPUT_NORM, TOKEN_EMBD, split_name, tensor_name,
                                        tensor_shapes)
from .hf_config import HFModelSpec

_GLOBAL = {
    "model.embed_tokens.weight": TOKEN_EMBD,
    "model.norm.weight": OUTPUT_NORM,
    "lm_head.weight": OUTPUT,
}
_LAYER = {  # the HF name within a layer -> the GGUF part (`tensor_name(part, layer)`)
    "input_layernorm.weight": ATTN_NORM,
    "self_attn.q_proj.weight": ATTN_Q,
    "self_attn.k_proj.weight": ATTN_K,
    "self_attn.v_proj.weight": ATTN_V,
    "self_attn.o_proj.weight": ATTN_OUTPUT,
    "post_attention_layernorm.weight": FFN_NORM,
    "mlp.gate_proj.weight": FFN_GATE,
    "mlp.up_proj.weight": FFN_UP,
    "mlp.down_proj.weight": FFN_DOWN,
}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.bias)$")  # buffers some checkpoints store; never used


def gguf_name(hf_name: str) -> str | None:
    """The GGUF name of an HF tensor, or None for a tensor the converter does not know."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    match = _LAYER_NAME.match(hf_name)
    if match and match.group(2) in _LAYER:
        return tensor_name(_LAYER[match.group(2)], int(match.group(1)))
    return None


def expected_shapes(spec: HFModelSpec) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor the model needs, with its torch shape (out, in): the engine's own table."""
    return tensor_shapes(spec.n_vocab, spec.n_embd, spec.n_layer, spec.n_head, spec.n_head_kv, spec.n_ff,
                         spec.tie_word_embeddings)


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K rows from HF's rotate-half pairing (j, j + hd/2) to GGUF's adjacent pairs (2j, 2j+1):
    within each head, new row 2j = old row j and new row 2j+1 = old row j + hd/2 (llama.cpp's converter)."""
    rows = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def prepare(name: str, values: np.ndarray, spec: HFModelSpec) -> np.ndarray:
    """Apply the GGUF conventions to one tensor's float32 values."""
    part = split_name(name)[0]
    if part == ATTN_Q:
        return permute_for_rope(values, spec.n_head)
    if part == ATTN_K:
        return permute_for_rope(values, spec.n_head_kv)
    return values
