"""The reference forward pass: plain torch float32, one short file from token ids to logits.

This is the oracle every faster path is compared against. Follow one token:
    embedding -> per layer [RMSNorm -> Q/K/V (+ bias) -> (Q/K head norms) -> RoPE -> KV cache -> attention
                            (within the sliding window on such layers) -> output proj -> (post norm) -> residual,
                            RMSNorm -> gate/up -> activation -> down -> (post norm) -> residual]
    -> RMSNorm -> output projection -> (softcap) -> logits
RoPE rotates adjacent pairs (2j, 2j+1) for llama and minicpm, because llama.cpp's converter permutes their Q/K
rows (GGUF convention); qwen2, qwen3 and gemma3 files keep Hugging Face's order, rotated as halves (j, j + d/2):
llama.cpp's NEOX mode. The parenthesized steps are some architectures' (`config.py`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from ..finite_check import require_finite
from ..model_file.config import ModelConfig
from ..model_file.tensor_shapes import block_name
from .weights import LayerWeights, ModelWeights


class KVCache:
    """Preallocated keys and values for every layer, indexed by position."""

    def __init__(self, config: ModelConfig, n_ctx: int):
        shape = (config.n_layer, n_ctx, config.n_head_kv, config.head_dim)
        self.k = torch.empty(shape, dtype=torch.float32)  # written before read: not zero-filled
        self.v = torch.empty(shape, dtype=torch.float32)
        self.n_ctx = n_ctx


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_tables(config: ModelConfig, n_ctx: int, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (n_ctx, rope_dim // 2) for layer `layer` (-1: a full-attention layer's): angle of pair j at
    position p is scale * p * base^(-2j / rope_dim) / factor_j (llama.cpp's freq_scale and Llama 3's freq factors,
    which only full-attention layers have)."""
    base, scale = config.rope_settings(layer) if layer >= 0 else (config.rope_base, config.rope_scale)
    inv_freq = base ** (-torch.arange(0, config.rope_dim, 2, dtype=torch.float64) / config.rope_dim)
    if config.rope_freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(config.rope_freq_factors, dtype=torch.float64)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64), inv_freq * scale)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool = False) -> torch.Tensor:
    """x: (T, heads, head_dim); cos/sin: (T, rope_dim // 2). Rotates pairs (2j, 2j+1) of the first rope_dim, or
    with `neox` pairs (j, j + rope_dim // 2)."""
    rope_dim = cos.shape[-1] * 2
    if neox:
        first, second = x[..., :rope_dim // 2], x[..., rope_dim // 2:rope_dim]
    else:
        pairs = x[..., :rope_dim].reshape(*x.shape[:-1], rope_dim // 2, 2)
        first, second = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    turned = (first * c - second * s, first * s + second * c)
    rotated = torch.cat(turned, dim=-1) if neox else torch.stack(turned, dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rope_dim:]), dim=-1)


def ffn_activation(gate: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    if config.activation == "silu":
        return torch.nn.functional.silu(gate)
    if config.activation == "gelu":
        return torch.nn.functional.gelu(gate, approximate="tanh")
    # relu is fatrelu with threshold 0; FATReLU_T(v) = v if v >= T else 0 (as the ProSparse HF code)
    return torch.where(gate >= config.activation_threshold, gate, torch.zeros_like(gate))


def projected(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias when the model has one)."""
    return x @ weight.T if bias is None else x @ weight.T + bias


def optional_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of x with `weight`, or x itself when the model has no such norm: each head
    of Q or K (T, heads, head_dim) (qwen3, gemma3), a block's output before its residual add (gemma3)."""
    return x if weight is None else rms_norm(x, weight, eps)


class Transformer:
    """LLaMA-family decoder (llama, minicpm, qwen2, qwen3, gemma3) with a KV cache; `forward` runs a batch of new
    positions.

    `sparse`, when set (`sparse_ffn.py`: exact or predicted), masks each layer's FFN activation: the neurons it
    drops contribute nothing. `observers` are called once per layer as observer(layer_index, residual,
    activation): the residual stream before ffn_norm (T, n_embd) and the dense FFN activation act(gate)
    (T, n_ff) — for profiling and predictor training. `inputs`, when set (`sparse_inputs.py`: TEAL), zeroes the
    small entries of every projection's input.
    """

    def __init__(self, config: ModelConfig, weights: ModelWeights, n_ctx: int):
        self.config = config
        self.weights = weights
        self.cache = KVCache(config, n_ctx)
        self.rope = [rope_tables(config, n_ctx, i) for i in range(config.n_layer)]  # each layer's (cos, sin)
        self.sparse = None
        self.inputs = None
        self.observers: list = []
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.attention_seconds = 0.0  # summed over single-token forward calls while `time_attention` is set
        self.time_attention = False

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    @contextmanager
    def every_neuron(self) -> Iterator[None]:
        """The dense model for the duration (profiling, perplexity's dense comparison), whatever sparse mode is set."""
        sparse, inputs, self.sparse, self.inputs = self.sparse, self.inputs, None, None
        try:
            yield
        finally:
            self.sparse, self.inputs = sparse, inputs

    def _input(self, index: int, site: int, values: torch.Tensor) -> torch.Tensor:
        """A projection's input, with `inputs`' zeroing (site: `sparse_inputs.py`'s numbering)."""
        return values if self.inputs is None else self.inputs.masked(index, site, values)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int, all_logits: bool = True, sequence: int = 0) -> torch.Tensor:
        """tokens: (T,) int64 at positions start_pos..start_pos+T-1. Returns logits (T, n_vocab) float32, or
        (1, n_vocab) for the last position when not `all_logits`. One sequence (0) only: the oracle holds one
        KV cache."""
        assert sequence == 0, "the reference backend holds one sequence"
        c, w = self.config, self.weights
        x = w.token_embd[tokens].to(self.device, self.dtype) * c.embedding_scale  # (T, n_embd)
        timed = self.time_attention and tokens.shape[0] == 1
        for index, layer in enumerate(w.layers):
            start = self._clock() if timed else 0.0
            attended = self.attention(index, layer, rms_norm(x, layer.attn_norm, c.rms_eps), start_pos)
            x = x + optional_norm(attended, layer.post_attention_norm, c.rms_eps) * c.residual_scale
            if timed:
                self.attention_seconds += self._clock() - start
            x = x + optional_norm(self.ffn_block(index, layer, x), layer.post_ffw_norm, c.rms_eps) * c.residual_scale
            require_finite(x, f"layer {index} ({block_name('*', index)})", start_pos)
        x = rms_norm(x if all_logits else x[-1:], w.output_norm, c.rms_eps)
        logits = (x @ w.output.T) / c.logit_scale
        if c.logit_softcap > 0:
            logits = torch.tanh(logits / c.logit_softcap) * c.logit_softcap
        return logits.float().cpu()

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def attention(self, index: int, layer: LayerWeights, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        c = self.config
        n_new, end = x.shape[0], start_pos + x.shape[0]
        cos, sin = (table[start_pos:end] for table in self.rope[index])
        x = self._input(index, 0, x)
        q = optional_norm(projected(x, layer.attn_q, layer.attn_q_bias).view(n_new, c.n_head, c.head_dim),
                      layer.attn_q_norm, c.rms_eps)
        k = optional_norm(projected(x, layer.attn_k, layer.attn_k_bias).view(n_new, c.n_head_kv, c.head_dim),
                      layer.attn_k_norm, c.rms_eps)
        q, k = apply_rope(q, cos, sin, c.rope_neox) * c.query_scale, apply_rope(k, cos, sin, c.rope_neox)
        v = projected(x, layer.attn_v, layer.attn_v_bias).view(n_new, c.n_head_kv, c.head_dim)
        self.cache.k[index, start_pos:end] = k
        self.cache.v[index, start_pos:end] = v
        keys = self.cache.k[index, :end].repeat_interleave(c.n_head // c.n_head_kv, dim=1)  # (end, n_head, hd)
        values = self.cache.v[index, :end].repeat_interleave(c.n_head // c.n_head_kv, dim=1)
        scores = torch.einsum("thd,shd->hts", q, keys) / math.sqrt(c.head_dim)  # (n_head, n_new, end)
        query_pos = torch.arange(start_pos, end, device=x.device)[:, None]
        key_pos = torch.arange(end, device=x.device)[None, :]
        hidden = key_pos > query_pos
        if c.window(index):  # llama.cpp's standard sliding window: keys less than `window` positions back
            hidden = hidden | (query_pos - key_pos >= c.window(index))
        scores = scores.masked_fill(hidden, float("-inf"))
        out = torch.einsum("hts,shd->thd", scores.softmax(-1), values).reshape(n_new, c.n_head * c.head_dim)
        return self._input(index, 1, out) @ layer.attn_output.T

    def ffn_block(self, index: int, layer: LayerWeights, residual: torch.Tensor) -> torch.Tensor:
        """The FFN of (T, n_embd) residual rows: act(gate) * up @ down, with the sparse mode's mask applied."""
        x = self._input(index, 2, rms_norm(residual, layer.ffn_norm, self.config.rms_eps))
        activation = ffn_activation(x @ layer.ffn_gate.T, self.config)  # (T, n_ff)
        for observe in self.observers:
            observe(index, residual, activation)
        if self.sparse is not None:
            activation = self.sparse.masked(index, residual, activation)
        return self._input(index, 3, activation * (x @ layer.ffn_up.T)) @ layer.ffn_down.T
