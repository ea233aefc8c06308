"""The fast forward pass: a token's path through the layers' parts, as `build.py` assembled them.

The same computation as the reference (`reference/model.py`). Follow one token:
    embedding row (decoded from the file's format) -> per layer, its parts in order
      [boundary, if the residual stream changes device here]
      attention part   x += attention(RMSNorm(x))      (CPU, TEAL or GPU: `parts.py`)
      FFN part         x += FFN(RMSNorm(x))            (dense, sparse, TEAL, GPU dense or split)
    -> the output part: RMSNorm -> output projection -> logits
Every part works on one run state (`run_state.RunState`: buffers and KV caches), by one protocol (`parts.py`).
Decoding one token reuses one run state; a batch of T > 1 tokens (a prompt) gets its own per call, and each
weight row is read once for all T.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import HybridInferError
from ..finite_check import non_finite_error, require_finite
from ..model_file.config import ModelConfig
from ..model_file.tensor_shapes import block_name
from .kv_types import DEFAULT_KV_TYPE, KV_TYPES, KVType
from .run_state import KVCaches, RunState
from .weights import PackedWeights


class Decoder:
    """LLaMA-family decoder over packed weights: `layers[i]` is layer i's parts (attention, FFN, maybe a boundary
    first or last), `output` the output part. `observers` are called once per CPU layer as observer(layer_index,
    residual, activation) (`parts.CPUFFN`). `gpu_side` (`hybrid/gpu_side.GPUSide`) holds what the GPU side does,
    or is None; `token_done()` closes a decoded token's statistics (the hybrid report). `sparse_mode` is the part
    with the run's sparse statistics (`stats`, `predictors`), or None when dense. `cache_types`: the CPU layers'
    KV cache types (keys', values'; `kv_types.py`). `graphed` (`hybrid/decode_graphs.GraphedDecode`), where given,
    runs a decoded token of the built layers (captured once, then replayed)."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, n_ctx: int, layers: list[tuple],
                 output: Callable, observers: list, float_activations: bool = False, gpu_side=None,
                 sparse_mode=None, token_done: Callable[[], None] | None = None,
                 cache_types: tuple[KVType, KVType] = (KV_TYPES[DEFAULT_KV_TYPE],) * 2, graphed=None):
        self.config, self.weights, self.float_activations = config, weights, bool(float_activations)
        self.layers, self.output, self.observers = layers, output, observers
        self.graphed = graphed
        self.gpu_side, self.sparse_mode = gpu_side, sparse_mode
        self.token_done = token_done or (lambda: None)
        self.caches = KVCaches.new(config, 1, n_ctx, cache_types)
        self._decode_state = RunState(config, 1, 1, self.caches)
        self._step_states: dict[int, RunState] = {}  # forward_sequences' run states, per number of sequences

    def hold_sequences(self, n_seq: int, n_ctx: int) -> None:
        """KV caches for `n_seq` sequences of up to `n_ctx` positions each (at most the n_ctx it was made for),
        decoded one at a time (`forward`'s `sequence`) or together (`forward_sequences`); what the caches held
        is gone."""
        if n_seq > 1 and self.gpu_side is not None:
            raise HybridInferError("the hybrid runtime decodes one sequence at a time: use --parallel 1")
        self.caches = self.caches.resized(self.config, n_seq, n_ctx)
        self._decode_state = RunState(self.config, 1, 1, self.caches)
        self._step_states = {}

    @property
    def n_ctx(self) -> int:
        """Positions of one sequence."""
        return self.caches.n_ctx

    @contextmanager
    def replaced(self, layers: list[tuple]) -> Iterator[None]:
        """Run `layers` instead of the built ones for the duration (the dense twin, TEAL's calibration)."""
        built, self.layers = self.layers, layers
        try:
            yield
        finally:
            self.layers = built

    @contextmanager
    def every_neuron(self) -> Iterator[None]:
        """The dense model for the duration (profiling, perplexity's dense comparison): each part's dense twin."""
        with self.replaced([tuple(part.every_neuron() for part in parts) for parts in self.layers]):
            yield

    def forward(self, tokens: torch.Tensor, start_pos: int, all_logits: bool = True, sequence: int = 0) -> torch.Tensor:
        """tokens: (T,) int64 at positions start_pos..start_pos+T-1 of `sequence`. Returns float32 logits
        (T, n_vocab), or (1, n_vocab) for the last position when not `all_logits`."""
        ids = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        n = ids.shape[0]
        s = self._decode_state if n == 1 else RunState(self.config, n, n if all_logits else 1, self.caches)
        s.positions[:], s.sequences[:] = np.arange(start_pos, start_pos + n), sequence
        return self._forward(ids, s, start_pos)

    def forward_sequences(self, tokens: np.ndarray, positions: np.ndarray, sequences: np.ndarray) -> torch.Tensor:
        """One new token for each of N sequences at once, each weight row read once for all: token i at position
        positions[i] of sequence sequences[i] (distinct; `hold_sequences`). Returns float32 logits (N, n_vocab);
        each row is what `forward` gives for that token alone."""
        if self.gpu_side is not None:
            raise HybridInferError("the hybrid runtime decodes one sequence at a time: use --parallel 1")
        n = len(tokens)
        s = self._step_states.get(n)
        if s is None:
            s = self._step_states[n] = RunState(self.config, n, n, self.caches)
        s.positions[:], s.sequences[:] = positions, sequences
        return self._forward(np.asarray(tokens, np.int64), s, int(np.min(positions)))

    def _forward(self, ids: np.ndarray, s: RunState, start_pos: int) -> torch.Tensor:
        """The forward pass of the tokens `ids` at s.positions of s.sequences; logits of the last s.logits rows."""
        c = self.config
        s.start_pos, s.on_device = start_pos, None
        s.x[:] = self.weights.token_embd.dequantize_rows(ids)
        require_finite(s.x, "the token embeddings (token_embd)", start_pos)
        if c.embedding_scale != 1.0:
            s.x *= np.float32(c.embedding_scale)
        if s.tokens == 1 and self.graphed is not None and self.layers is self.graphed.layers:
            return self._finished(self.graphed(s), s, start_pos)
        for index, parts in enumerate(self.layers):
            try:
                for part in parts:
                    part(index, s)
            except ZeroDivisionError:  # a kernel divided by a sum (softmax, norm) that NaN/inf values made 0
                raise non_finite_error(f"layer {index} ({block_name('*', index)})", start_pos) from None
            if s.on_device is None:
                require_finite(s.x, f"layer {index} ({block_name('*', index)})", start_pos)
        return self._finished(self.output(s), s, start_pos)

    def _finished(self, logits: np.ndarray, s: RunState, start_pos: int) -> torch.Tensor:
        require_finite(logits, "the output projection", start_pos)
        if s.tokens == 1:
            self.token_done()
        return torch.from_numpy(logits)
