"""The run state of one forward pass over T tokens, as llama2.c's `RunState`: every buffer the parts write (float32;
activations with their int8 blocks), the KV caches, and the kernels' argument groups over them, made once.

Decoding one token reuses one run state; a batch of T > 1 tokens (a prompt) gets its own per call. The KV caches
(`KVCaches`) outlive run states: they belong to the decoder, and `hold_sequences` replaces them.
"""

from __future__ import annotations

import numpy as np

from ..kernels.block_args import AttentionScratch, DenseFFNScratch, KVState
from ..kernels.cpu_quant import activation_buffers
from ..model_file.config import ModelConfig
from ..reference.model import rope_tables
from .kv_types import KVType


class KVCaches:
    """The CPU layers' keys and values for `n_seq` sequences of `n_ctx` positions each, in `types` (the keys', the
    values'; `kv_types.py`: f32, f16, q8_0), and each layer's RoPE tables."""

    def __init__(self, config: ModelConfig, n_seq: int, n_ctx: int, rope: list[tuple[np.ndarray, np.ndarray]],
                 types: tuple[KVType, KVType]):
        c = config
        self.types = type_k, type_v = types
        # (n_layer, n_seq, n_head_kv, n_ctx, head_dim) values and (..., head_dim / 32) Q8_0 scales (else (..., 0)),
        # written before read (a sequence's positions up to the one evaluated): not zero-filled, so pages become
        # resident as used
        shape = (c.n_layer, n_seq, c.n_head_kv, n_ctx, c.head_dim)
        self.k, self.k_scales = type_k.new(shape)
        self.v, self.v_scales = type_v.new(shape)
        self.rope = rope  # layer i's (cos, sin), each (n_ctx of the decoder, rope_dim / 2) float32

    @classmethod
    def new(cls, config: ModelConfig, n_seq: int, n_ctx: int, types: tuple[KVType, KVType]) -> KVCaches:
        tables: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}  # one pair per (base, scale)
        for i in range(config.n_layer):
            if config.rope_settings(i) not in tables:
                tables[config.rope_settings(i)] = tuple(t.numpy() for t in rope_tables(config, n_ctx, i))
        return cls(config, n_seq, n_ctx, [tables[config.rope_settings(i)] for i in range(config.n_layer)], types)

    def resized(self, config: ModelConfig, n_seq: int, n_ctx: int) -> KVCaches:
        """New, empty caches of the same types and RoPE tables for `n_seq` sequences of `n_ctx` positions."""
        return KVCaches(config, n_seq, n_ctx, self.rope, self.types)

    @property
    def n_ctx(self) -> int:
        return self.k.shape[3]


class RunState:
    def __init__(self, config: ModelConfig, tokens: int, n_logits: int, caches: KVCaches):
        c = config
        q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.x = np.empty((tokens, c.n_embd), np.float32)  # the residual stream (while it is on the CPU)
        self.on_device: object | None = None  # the residual stream (T, n_embd) while it is on the GPU side (torch)
        self.start_pos = 0  # the first position of the batch (messages; the GPU side holds one sequence)
        self.normed = activation_buffers(tokens, c.n_embd)  # RMSNorm output, input of Q/K/V and gate/up
        self.qkv = np.empty((tokens, q_rows + 2 * kv_rows), np.float32)
        self.q = np.empty((tokens, c.n_head, c.head_dim), np.float32)
        self.k = np.empty((tokens, c.n_head_kv, c.head_dim), np.float32)
        self.v = np.empty((tokens, c.n_head_kv, c.head_dim), np.float32)
        self.scores = np.empty((c.n_head, caches.n_ctx), np.float32)
        self.attended = activation_buffers(tokens, q_rows)  # attention output, input of the output projection
        self.block_out = np.empty((tokens, c.n_embd), np.float32)  # attention or FFN block output
        self.gate = np.empty((tokens, c.n_ff), np.float32)
        self.up = np.empty((tokens, c.n_ff), np.float32)
        self.hidden = activation_buffers(tokens, c.n_ff)  # act(gate) * up, input of the down projection
        self.final = activation_buffers(n_logits, c.n_embd)
        self.logits = np.empty((n_logits, c.n_vocab), np.float32)
        self.positions = np.empty(tokens, np.int64)  # token t is at positions[t] of sequence sequences[t]
        self.sequences = np.empty(tokens, np.int64)
        self.kv = [KVState(*caches.rope[i], self.positions, self.sequences, caches.k[i], caches.v[i],
                           caches.k_scales[i], caches.v_scales[i], self.scores, c.window(i))
                   for i in range(c.n_layer)]  # each layer's, for the attention blocks
        self.attention_scratch = AttentionScratch(self.normed, self.qkv, self.q, self.k, self.v, self.attended,
                                                  self.block_out)
        self.dense_ffn_scratch = DenseFFNScratch(self.gate, self.up, self.hidden, self.block_out)

    @property
    def tokens(self) -> int:
        return self.x.shape[0]
