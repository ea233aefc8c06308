"""Tiny LLaMA-family GGUF files written by the tests themselves (random weights, byte-level SPM vocabulary)."""

from __future__ import annotations

import hashlib

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from hybridinfer.model_file.config import ACTIVATION_KEY, THRESHOLD_KEY
try:  # gguf-py's encoders, and one for the K-quants
    from kquant_blocks import quantize
except ModuleNotFoundError:  # imported as tests.tiny_models, by tools/
    from tests.kquant_blocks import quantize

SPECIAL = ["<unk>", "<s>", "</s>"]
WORDS = ["▁the", "▁a", "▁of", "▁and", "▁to", "▁in", "▁is", "▁it", "▁that", "▁hello", "▁world", "he", "ll", "o", "▁"]


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, 256 byte tokens, then a few word pieces: every text encodes (byte fallback)."""
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    scores = [0.0] * (len(SPECIAL) + 256) + [-float(i) for i in range(len(WORDS))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(WORDS)
    return tokens, scores, types


def add_spm_vocab(writer: gguf.GGUFWriter, vocab: tuple[list[str], list[float], list[int]]) -> None:
    """The tokenizer keys of an SPM vocabulary (tokens, scores, types) with <unk>, <s>, </s> as ids 0, 1, 2."""
    tokens, scores, types = vocab
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


def random_weights(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=None, tied=False, seed=0,
                   gate_bias=0.0) -> dict[str, np.ndarray]:
    """float32 weights in GGUF names and torch shapes (out, in). `gate_bias` shifts gate weights so ReLU
    models have a mix of active and inactive neurons."""
    rng = np.random.default_rng(seed)
    n_vocab = n_vocab or len(spm_vocab()[0])
    head_dim = n_embd // n_head

    def w(*shape, scale=None):
        return (rng.standard_normal(shape) * (scale or shape[-1] ** -0.5)).astype(np.float32)

    weights = {"token_embd.weight": w(n_vocab, n_embd, scale=1.0),
               "output_norm.weight": (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32)}
    if not tied:
        weights["output.weight"] = w(n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        weights.update({
            p + "attn_norm.weight": (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32),
            p + "attn_q.weight": w(n_head * head_dim, n_embd),
            p + "attn_k.weight": w(n_head_kv * head_dim, n_embd),
            p + "attn_v.weight": w(n_head_kv * head_dim, n_embd),
            p + "attn_output.weight": w(n_embd, n_head * head_dim),
            p + "ffn_norm.weight": (1 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32),
            p + "ffn_gate.weight": w(n_ff, n_embd) + np.float32(gate_bias / n_embd),
            p + "ffn_up.weight": w(n_ff, n_embd),
            p + "ffn_down.weight": w(n_embd, n_ff),
        })
    return weights


def write_tiny_gguf(path: Path, weights: dict[str, np.ndarray], *, n_head=4, n_head_kv=2, weight_type=T.F32,
                    activation: str | None = None, threshold: float = 0.0, arch="llama", rope_base=10000.0,
                    context_length=256, powerinfer=False, extra: dict | None = None,
                    types: dict[str, T] | None = None) -> Path:
    """Write `weights` (from random_weights) as a GGUF; 2-D weights get `weight_type` (or types[suffix] for the names
    ending in that suffix, e.g. {"attn_v.weight": T.Q8_0}, as a K-quant mix does), norms stay F32."""
    n_embd = weights["token_embd.weight"].shape[1]
    n_layer = len({k.split(".")[1] for k in weights if k.startswith("blk.")})
    n_ff = weights["blk.0.ffn_gate.weight"].shape[0]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(n_layer)
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(rope_base)
    writer.add_rope_dimension_count(n_embd // n_head)
    add_spm_vocab(writer, spm_vocab())
    writer.add_add_bos_token(True)
    if activation is not None:
        writer.add_string(ACTIVATION_KEY, activation)
        writer.add_float32(THRESHOLD_KEY, threshold)
    for key, value in (extra or {}).items():
        writer.add_float32(key, value)
    if powerinfer:
        weights = {(name.replace("ffn_down", "ffn_down_t") if name.endswith("ffn_down.weight") else name):
                   (np.ascontiguousarray(value.T) if name.endswith("ffn_down.weight") else value)
                   for name, value in weights.items()}
    write_tensors(writer, weights, weight_type, types)
    if powerinfer:
        with open(path, "r+b") as handle:
            handle.write(b"PWRI")
    return path


def write_tensors(writer: gguf.GGUFWriter, weights: dict[str, np.ndarray], weight_type, types=None) -> None:
    """Add `weights` to `writer` (2-D ones in `weight_type`, or types[suffix] for the names ending in that suffix;
    norms as they are) and write the file."""
    for name, value in weights.items():
        qtype = next((t for suffix, t in (types or {}).items() if name.endswith(suffix)), weight_type)
        if value.ndim == 2 and qtype != T.F32:
            writer.add_tensor(name, quantize(value, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def stored_weights(weights: dict[str, np.ndarray], weight_type) -> dict[str, np.ndarray]:
    """What a reader should get back: the weights after a quantize/dequantize round trip through `gguf`."""
    out = {}
    for name, value in weights.items():
        if value.ndim == 2 and weight_type != T.F32:
            value = gguf.quants.dequantize(quantize(value, weight_type), weight_type).astype(np.float32)
        out[name] = value
    return out


def directory_digest(directory) -> str:
    """One hash of every file's name and bytes under `directory` (to show an input was not modified)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()
