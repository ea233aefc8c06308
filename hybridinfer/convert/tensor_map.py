"""Hugging Face tensor names -> GGUF tensor names, per architecture, and llama.cpp's Q/K row permutation (LLaMA and
MiniCPM only: qwen2 and qwen3 keep Hugging Face's row order, which llama.cpp rotates as halves, its NEOX RoPE)."""

from __future__ import annotations

import re

import numpy as np

from ..model_file.tensor_shapes import (ATTN_K, ATTN_K_NORM, ATTN_NORM, ATTN_OUTPUT, ATTN_Q, ATTN_Q_NORM, ATTN_V,
                                        FFN_DOWN, FFN_GATE, FFN_NORM, FFN_UP, OUTPUT, OUTPUT_NORM, ROPE_FREQS,
                                        TOKEN_EMBD, architecture_shapes, bias_name, split_name, tensor_name,
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
_LAYER_EXTRA = {  # per GGUF architecture, the tensors its layer adds: HF name -> GGUF part
    "qwen2": {"self_attn.q_proj.bias": ATTN_Q, "self_attn.k_proj.bias": ATTN_K, "self_attn.v_proj.bias": ATTN_V},
    "qwen3": {"self_attn.q_norm.weight": ATTN_Q_NORM, "self_attn.k_norm.weight": ATTN_K_NORM},
}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
IGNORED = re.compile(r"rotary_emb\.inv_freq$")  # a buffer some checkpoints store, recomputed from the config


def gguf_name(hf_name: str, arch: str) -> str | None:
    """The GGUF name of an HF tensor in a model of GGUF architecture `arch`, or None for one it does not map."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    match = _LAYER_NAME.match(hf_name)
    if not match:
        return None
    layer, within = int(match.group(1)), match.group(2)
    if within in _LAYER:
        return tensor_name(_LAYER[within], layer)
    part = _LAYER_EXTRA.get(arch, {}).get(within)
    if part is None:
        return None
    return bias_name(part, layer) if within.endswith(".bias") else tensor_name(part, layer)


def expected_shapes(spec: HFModelSpec) -> dict[str, tuple[int, ...]]:
    """Every GGUF tensor the model needs, with its torch shape (out, in): the engine's own table, Llama 3's
    computed rope_freqs first (where llama.cpp's converter writes it)."""
    shapes = {ROPE_FREQS: (spec.head_dim // 2,)} if spec.rope_scaling.kind == "llama3" else {}
    shapes.update(tensor_shapes(spec.n_vocab, spec.n_embd, spec.n_layer, spec.n_head, spec.n_head_kv, spec.n_ff,
                                spec.tie_word_embeddings, spec.head_dim))
    for layer in range(spec.n_layer):
        shapes.update(architecture_shapes(spec, layer))
    return shapes


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K rows from HF's rotate-half pairing (j, j + hd/2) to GGUF's adjacent pairs (2j, 2j+1):
    within each head, new row 2j = old row j and new row 2j+1 = old row j + hd/2 (llama.cpp's converter)."""
    rows = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def prepare(name: str, values: np.ndarray, spec: HFModelSpec) -> np.ndarray:
    """Apply the GGUF conventions to one tensor's float32 values."""
    part = split_name(name)[0]
    if not spec.permutes_qk or not name.endswith(".weight"):
        return values
    if part == ATTN_Q:
        return permute_for_rope(values, spec.n_head)
    if part == ATTN_K:
        return permute_for_rope(values, spec.n_head_kv)
    return values
