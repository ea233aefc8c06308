"""Tiny GGUF files of the architectures beyond LLaMA's shape (qwen2, qwen3, gemma3, Llama 3), written with gguf-py in
llama.cpp's conventions: its metadata keys and tensor names, Hugging Face's Q/K row order (NEOX RoPE) for qwen2,
qwen3 and gemma3, Gemma's norm weights already holding 1 + w, Llama 3's rope_freqs. Random weights, the byte-level
SPM vocabulary of `tiny_models.py` (llama.cpp loads any vocabulary with any architecture)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from hybridinfer.model_file.config import ACTIVATION_KEY

from tiny_models import add_spm_vocab, spm_vocab, write_tensors

ARCHITECTURES = ("qwen2", "qwen3", "gemma3", "llama3")
# per architecture: layers, heads, KV heads, head width (gemma3's differs from n_embd / heads, as Gemma 3's does)
SHAPES = {"qwen2": (2, 4, 2, 16), "qwen3": (2, 4, 2, 16), "gemma3": (6, 4, 1, 32), "llama3": (2, 4, 2, 16)}
N_EMBD, N_FF = 64, 96
GEMMA_WINDOW = 4  # small, so that a few tokens reach past it


def arch_weights(arch: str, seed: int = 0, n_layer: int | None = None) -> dict[str, np.ndarray]:
    """float32 weights in GGUF names and torch shapes (out, in) for `arch` (with `n_layer` layers, if given)."""
    layers, n_head, n_head_kv, head_dim = SHAPES[arch]
    n_layer = n_layer or layers
    rng = np.random.default_rng(seed)
    n_vocab = len(spm_vocab()[0])

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[-1] ** -0.5)).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    weights = {"token_embd.weight": w(n_vocab, N_EMBD, scale=1.0 if arch != "gemma3" else 0.2),
               "output_norm.weight": norm(N_EMBD)}
    if arch != "gemma3":  # Gemma ties its embeddings
        weights["output.weight"] = w(n_vocab, N_EMBD)
    if arch == "llama3":
        weights["rope_freqs.weight"] = rng.uniform(1.0, 8.0, head_dim // 2).astype(np.float32)
    for i in range(n_layer):
        p = f"blk.{i}."
        weights.update({
            p + "attn_norm.weight": norm(N_EMBD),
            p + "attn_q.weight": w(n_head * head_dim, N_EMBD),
            p + "attn_k.weight": w(n_head_kv * head_dim, N_EMBD),
            p + "attn_v.weight": w(n_head_kv * head_dim, N_EMBD),
            p + "attn_output.weight": w(N_EMBD, n_head * head_dim),
            p + "ffn_norm.weight": norm(N_EMBD),
            p + "ffn_gate.weight": w(N_FF, N_EMBD),
            p + "ffn_up.weight": w(N_FF, N_EMBD),
            p + "ffn_down.weight": w(N_EMBD, N_FF),
        })
        if arch == "qwen2":
            weights.update({p + "attn_q.bias": w(n_head * head_dim, scale=0.5),
                            p + "attn_k.bias": w(n_head_kv * head_dim, scale=0.5),
                            p + "attn_v.bias": w(n_head_kv * head_dim, scale=0.5)})
        if arch in ("qwen3", "gemma3"):
            weights.update({p + "attn_q_norm.weight": norm(head_dim), p + "attn_k_norm.weight": norm(head_dim)})
        if arch == "gemma3":
            weights.update({p + "post_attention_norm.weight": norm(N_EMBD), p + "post_ffw_norm.weight": norm(N_EMBD)})
    return weights


def write_arch_gguf(path: Path, arch: str, weight_type=T.F32, seed: int = 0, context_length: int = 256,
                    rope_scaling: tuple[str, float] | None = None, n_layer: int | None = None,
                    logit_softcap: float = 0.0, activation: str | None = None) -> Path:
    """A tiny `arch` model (see ARCHITECTURES; llama3 is written as llama with rope_freqs) at `path`; 2-D weights
    in `weight_type`, norms, biases and rope_freqs F32; `rope_scaling`: (rope.scaling.type, rope.scaling.factor);
    `n_layer`: another layer count than SHAPES' (62 makes a gemma3 file llama.cpp takes for the 27B);
    `logit_softcap`: a final_logit_softcapping key (Gemma 2's; Gemma 3 files have none) when above 0;
    `activation`: hybridinfer's FFN activation key ("relu": a ReLU-fied model of the architecture)."""
    layers, n_head, n_head_kv, head_dim = SHAPES[arch]
    n_layer = n_layer or layers
    writer = gguf.GGUFWriter(str(path), "llama" if arch == "llama3" else arch)
    writer.add_block_count(n_layer)
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1e6 if arch == "gemma3" else 10000.0 if arch == "llama3" else 1e6)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch == "llama3":
        writer.add_rope_dimension_count(head_dim)
    if arch == "gemma3":
        writer.add_sliding_window(GEMMA_WINDOW)
    if activation is not None:
        writer.add_string(ACTIVATION_KEY, activation)
    if logit_softcap > 0:
        writer.add_float32(f"{writer.arch}.final_logit_softcapping", logit_softcap)
    if rope_scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling[0]))
        writer.add_rope_scaling_factor(rope_scaling[1])
    add_spm_vocab(writer, spm_vocab())
    writer.add_add_bos_token(True)
    write_tensors(writer, arch_weights(arch, seed, n_layer), weight_type)
    return path
