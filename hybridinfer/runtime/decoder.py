"""The fast CPU forward pass: numpy buffers and numba kernels over weights packed from the GGUF file.

The same computation as the reference (`model.py`), one short file. Follow one token:
    embedding row (decoded from the file's format) -> per layer
      [RMSNorm -> Q, K, V (one packed matvec) -> RoPE -> KV cache -> attention -> output proj -> residual,
       RMSNorm -> the FFN part (`ffn`: dense, exact-sparse or predicted; `dense_ffn.py`) -> residual]
    -> RMSNorm -> output projection -> logits
A layer placed on the GPU side (`offload`, the hybrid runtime: `hybrid/gpu_side.py`) is handed the residual
stream there instead; it moves across the boundary only where a CPU layer meets a GPU layer.
Weight products with Q8_0/Q4_0/Q4_1 weights quantize their activations to int8 per 32-block, as llama.cpp
does (`float_activations=True` keeps them float32). Decoding one token writes into buffers allocated once;
a batch of T > 1 tokens (prompt) gets its own buffers per call, and each weight row is read once for all T.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ..errors import HybridInferError
from ..finite_check import non_finite_error, require_finite
from ..kernels import cpu_layer, cpu_ops
from ..kernels.cpu_quant import activation_buffers, matmul
from ..model_file.config import ModelConfig
from ..reference.model import rope_tables
from .dense_ffn import DenseFFN
from .weights import PackedLayer, PackedWeights


class Buffers:
    """Every intermediate of a forward pass over T tokens (float32; activations with their int8 blocks)."""

    def __init__(self, config: ModelConfig, tokens: int, n_ctx: int, n_logits: int):
        c = config
        q_rows, kv_rows = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.x = np.empty((tokens, c.n_embd), np.float32)  # the residual stream
        self.normed = activation_buffers(tokens, c.n_embd)  # RMSNorm output, input of Q/K/V and gate/up
        self.qkv = np.empty((tokens, q_rows + 2 * kv_rows), np.float32)
        self.q = np.empty((tokens, q_rows), np.float32)
        self.k = np.empty((tokens, kv_rows), np.float32)
        self.v = np.empty((tokens, kv_rows), np.float32)
        self.scores = np.empty((c.n_head, n_ctx), np.float32)
        self.attended = activation_buffers(tokens, q_rows)  # attention output, input of the output projection
        self.block_out = np.empty((tokens, c.n_embd), np.float32)  # attention or FFN block output
        self.gate = np.empty((tokens, c.n_ff), np.float32)
        self.up = np.empty((tokens, c.n_ff), np.float32)
        self.hidden = activation_buffers(tokens, c.n_ff)  # act(gate) * up, input of the down projection
        self.final = activation_buffers(n_logits, c.n_embd)
        self.logits = np.empty((n_logits, c.n_vocab), np.float32)
        self.positions = np.empty(tokens, np.int64)  # token t is at positions[t] of sequence sequences[t]
        self.sequences = np.empty(tokens, np.int64)


class PackedTransformer:
    """LLaMA-family decoder over packed weights with a float32 KV cache; `forward` runs a batch of new positions.

    `ffn` computes every CPU layer's FFN (a part of `dense_ffn.py`'s protocol: DenseFFN unless a sparse mode is
    plugged in); `inputs`, when set (TEAL, `teal.py`), computes the attention blocks too. `observers` are called
    once per layer as observer(layer_index, residual, activation), torch tensors as in `reference.model.Transformer`.
    """

    def __init__(self, config: ModelConfig, weights: PackedWeights, n_ctx: int, float_activations: bool = False):
        self.config, self.weights = config, weights
        self.float_activations = bool(float_activations)
        self.hold_sequences(1, n_ctx)
        cos, sin = rope_tables(config, n_ctx)
        self.rope_cos, self.rope_sin = cos.numpy(), sin.numpy()
        self.ffn = DenseFFN(config, float_activations)
        self.inputs = None  # TEAL's part (`teal.PackedTEAL`), which is then `ffn` too
        self.offload = None  # the GPU side of the hybrid runtime (`hybrid/gpu_side.GPUSide`)
        self.observers: list = []
        self.time_attention = False  # sum single-token attention time into attention_seconds (benchmarks)
        self.attention_seconds = 0.0
        self._decode_buffers = Buffers(config, 1, n_ctx, 1)

    def hold_sequences(self, n_seq: int, n_ctx: int) -> None:
        """KV caches for `n_seq` sequences of up to `n_ctx` positions each (at most the n_ctx it was made for),
        decoded one at a time (`forward`'s `sequence`) or together (`forward_sequences`); what the caches held
        is gone."""
        c = self.config
        if n_seq > 1 and getattr(self, "offload", None) is not None:
            raise HybridInferError("the hybrid runtime decodes one sequence at a time: use --parallel 1")
        # (n_layer, n_seq, n_head_kv, n_ctx, head_dim), written before read (a sequence's positions up to the one
        # evaluated): not zero-filled, so pages become resident as used
        self.k_caches = np.empty((c.n_layer, n_seq, c.n_head_kv, n_ctx, c.head_dim), np.float32)
        self.v_caches = np.empty_like(self.k_caches)
        self._step_buffers: dict[int, Buffers] = {}  # forward_sequences' buffers, per number of sequences

    @property
    def n_ctx(self) -> int:
        """Positions of one sequence."""
        return self.k_caches.shape[3]

    @contextmanager
    def every_neuron(self) -> Iterator[None]:
        """The dense model for the duration (profiling, perplexity's dense comparison), whatever part is plugged in."""
        part, inputs = self.ffn, self.inputs
        self.ffn, self.inputs = DenseFFN(self.config, self.float_activations), None
        try:
            yield
        finally:
            self.ffn, self.inputs = part, inputs

    def forward(self, tokens: torch.Tensor, start_pos: int, all_logits: bool = True, sequence: int = 0) -> torch.Tensor:
        """tokens: (T,) int64 at positions start_pos..start_pos+T-1 of `sequence`. Returns float32 logits
        (T, n_vocab), or (1, n_vocab) for the last position when not `all_logits`."""
        ids = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        n = ids.shape[0]
        b = self._decode_buffers if n == 1 else Buffers(self.config, n, self.n_ctx, n if all_logits else 1)
        b.positions[:], b.sequences[:] = np.arange(start_pos, start_pos + n), sequence
        return self._forward(ids, b, start_pos)

    def forward_sequences(self, tokens: np.ndarray, positions: np.ndarray, sequences: np.ndarray) -> torch.Tensor:
        """One new token for each of N sequences at once, each weight row read once for all: token i at position
        positions[i] of sequence sequences[i] (distinct; `hold_sequences`). Returns float32 logits (N, n_vocab);
        each row is what `forward` gives for that token alone."""
        if self.offload is not None:
            raise HybridInferError("the hybrid runtime decodes one sequence at a time: use --parallel 1")
        n = len(tokens)
        b = self._step_buffers.get(n)
        if b is None:
            b = self._step_buffers[n] = Buffers(self.config, n, self.n_ctx, n)
        b.positions[:], b.sequences[:] = positions, sequences
        return self._forward(np.asarray(tokens, np.int64), b, int(np.min(positions)))

    def _forward(self, ids: np.ndarray, b: Buffers, start_pos: int) -> torch.Tensor:
        """The forward pass of the tokens `ids` at b.positions of b.sequences; logits of the last b.logits rows
        (`start_pos`: the first position, for messages and the GPU side, which holds one sequence)."""
        c, w = self.config, self.weights
        n, n_logits = ids.shape[0], b.logits.shape[0]
        b.x[:] = w.token_embd.dequantize_rows(ids)
        require_finite(b.x, "the token embeddings (token_embd)", start_pos)
        if c.embedding_scale != 1.0:
            b.x *= np.float32(c.embedding_scale)
        timed = self.time_attention and n == 1
        gpu, on_gpu = self.offload, None  # on_gpu: the residual stream while it is on the GPU side
        cpu_seconds = 0.0  # the CPU layers' own time, for the hybrid report
        for index, layer in enumerate(w.layers):
            if gpu is not None and index in gpu.layers:
                on_gpu = gpu.upload_stream(b.x) if on_gpu is None else on_gpu
                on_gpu = gpu.layer(index, on_gpu, start_pos)
                continue
            if on_gpu is not None:
                gpu.download_stream(on_gpu, b.x)
                require_finite(b.x, f"the GPU side's layers before layer {index}", start_pos)
                on_gpu = None
            start = time.perf_counter()
            try:
                self._attention(index, layer, b, start_pos)
                if timed:
                    self.attention_seconds += time.perf_counter() - start
                self._ffn(index, layer, b)
            except ZeroDivisionError:  # a kernel divided by a sum (softmax, norm) that NaN/inf values made 0
                raise non_finite_error(f"layer {index} (blk.{index}.*)", start_pos) from None
            require_finite(b.x, f"layer {index} (blk.{index}.*)", start_pos)
            cpu_seconds += time.perf_counter() - start
        if gpu is not None and gpu.output is not None:
            on_gpu = gpu.upload_stream(b.x) if on_gpu is None else on_gpu
            logits = gpu.logits(on_gpu[n - n_logits:])
        else:
            if on_gpu is not None:
                gpu.download_stream(on_gpu, b.x)
            start = time.perf_counter()
            cpu_layer.normalize(b.x[n - n_logits:], w.output_norm, c.rms_eps, b.final)
            matmul(w.output, b.final, b.logits, float_activations=self.float_activations)
            if c.logit_scale != 1.0:
                b.logits /= np.float32(c.logit_scale)
            logits = b.logits.copy()
            cpu_seconds += time.perf_counter() - start
        require_finite(logits, "the output projection", start_pos)
        if gpu is not None and n == 1:
            gpu.finish_token(cpu_seconds)
        return torch.from_numpy(logits)

    def _attention(self, index: int, layer: PackedLayer, b: Buffers, start_pos: int) -> None:
        if self.inputs is not None:
            self.inputs.attention(self, index, layer, b)
            return
        c = self.config
        n = b.x.shape[0]
        block = cpu_layer.attention_block(*layer.attention_codes, self.float_activations)
        block(
            b.x, layer.attn_norm, c.rms_eps, layer.attn_qkv.raw, layer.attn_output.raw, b.normed, b.qkv,
            b.q.reshape(n, c.n_head, c.head_dim),
            b.k.reshape(n, c.n_head_kv, c.head_dim),
            b.v.reshape(n, c.n_head_kv, c.head_dim), self.rope_cos, self.rope_sin, b.positions, b.sequences,
            self.k_caches[index], self.v_caches[index], b.scores, b.attended, b.block_out,
            np.float32(c.residual_scale))

    def _ffn(self, index: int, layer: PackedLayer, b: Buffers) -> None:
        cpu_layer.normalize(b.x, layer.ffn_norm, self.config.rms_eps, b.normed)
        if self.observers:
            self._observe(index, layer, b)
        self.ffn(index, layer, b)

    def _observe(self, index: int, layer: PackedLayer, b: Buffers) -> None:
        gate = np.empty_like(b.gate)
        matmul(layer.ffn_gate, b.normed, gate, float_activations=self.float_activations)
        activation = torch.from_numpy(gate)
        if self.config.activation == "silu":
            activation = torch.nn.functional.silu(activation)
        else:
            cpu_ops.fatrelu(gate, np.float32(self.config.activation_threshold), gate)
        residual = torch.from_numpy(b.x.copy())
        for observe in self.observers:
            observe(index, residual, activation)
