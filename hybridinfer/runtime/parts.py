"""The parts a decoder layer is made of, and the CPU's plain ones (attention, dense FFN, output).

The protocol, one for every part: `part(index, s)` does layer `index`'s share of the work on the run state `s`
(`run_state.RunState`): s.x (T, n_embd), the residual stream, += residual_scale * the part's block, or, for a part
on the GPU side, s.on_device likewise. A part holds its weights (for every layer it serves: one part object may
serve several layers) and its own scratch where the run state's would be shared with another part running at the
same time. The builder (`build.py`) makes each layer's parts, in order:

  attention   CPUAttention (here), TEALAttention (`teal.py`), GPUAttention (`hybrid/gpu_parts.py`, its KV cache
              on the device)
  FFN         DenseFFN (here), SparseFFN (`sparse_ffn.py`: exact, predicted or CATS, the choice of candidate
              neurons), TEALFFN (`teal.py`), GPUDenseFFN (-ngl, `hybrid/gpu_parts.py`), SplitFFN (hot neurons on the
              GPU, cold on the CPU: `hybrid/split_ffn.py`)
  boundary    ToDevice / ToHost (`hybrid/gpu_parts.py`), where the residual stream changes device

and the output part, `output(s)` -> float32 logits (n_logits, n_vocab) of the last rows: CPUOutput (here) or
GPUOutput. A CPU FFN part starts from s.normed = ffn_norm(s.x) (`CPUFFN`, which also calls the observers); every
part may use the run state's scratch (s.qkv, s.gate, s.hidden, s.block_out, ...) for its own block.
`every_neuron()` returns the part that computes the same layer with every neuron (the dense twin: profiling,
perplexity's dense comparison); a part that already does returns itself.
"""

from __future__ import annotations

import numpy as np
import torch

from ..kernels import cpu_layer, cpu_ops
from ..kernels.block_args import AttentionWeights, BoundCall, FFNWeights
from ..kernels.cpu_quant import matmul
from ..model_file.config import ModelConfig
from .weights import PackedWeights


def attention_weights(config: ModelConfig, layer, qkv, output) -> AttentionWeights:
    """The attention block's argument group for `layer` (`weights.PackedLayer`) with these Q/K/V and output
    matrices (row-major, or TEAL's transposes): its norms, biases and constants."""
    return AttentionWeights(layer.attn_norm, qkv.raw, output.raw, np.float32(config.rms_eps),
                            np.float32(config.residual_scale), layer.qkv_bias, layer.q_norm, layer.k_norm,
                            layer.post_attention_norm, np.float32(config.query_scale))


class CPUAttention:
    """x += residual_scale * attention(RMSNorm(x)), one numba block per layer (`cpu_layer.attention_block`)."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, float_activations: bool):
        self.config, self.weights, self.float_activations = config, weights, bool(float_activations)
        self._weights: dict[int, AttentionWeights] = {}
        self._blocks: dict[int, BoundCall] = {}

    def __call__(self, index: int, s) -> None:
        block = self._blocks.get(index)
        if block is None:
            layer = self.weights.layers[index]
            self._weights[index] = attention_weights(self.config, layer, layer.attn_qkv, layer.attn_output)
            block = self._blocks[index] = BoundCall(
                cpu_layer.attention_block(*layer.attention_codes, self.float_activations))
        block(s.x, self._weights[index], s.kv[index], s.attention_scratch)

    def every_neuron(self) -> CPUAttention:
        return self


class CPUFFN:
    """The start every CPU FFN part shares: s.normed = ffn_norm(s.x) with its int8 blocks, then the observers
    (observer(layer_index, residual, activation), torch tensors as in `reference.model.Transformer`), then the
    part's own `compute(index, s)`."""

    stats = None  # what a sparse part counts (None: every neuron is read)
    predictors = None  # the predictor set a part reads, or None

    def __init__(self, config: ModelConfig, weights: PackedWeights, float_activations: bool, observers: list):
        self.config, self.weights, self.float_activations = config, weights, bool(float_activations)
        self.observers = observers  # the decoder's list, shared by its parts

    def __call__(self, index: int, s) -> None:
        layer = self.weights.layers[index]
        cpu_layer.normalize(s.x, layer.ffn_norm, self.config.rms_eps, s.normed, layer.ffn_codes[0])
        if self.observers:
            self._observe(index, s)
        self.compute(index, s)

    def compute(self, index: int, s) -> None:
        raise NotImplementedError

    def _observe(self, index: int, s) -> None:
        gate = np.empty_like(s.gate)
        matmul(self.weights.layers[index].ffn_gate, s.normed, gate, float_activations=self.float_activations)
        activation = torch.from_numpy(gate)
        if self.config.activation == "silu":
            activation = torch.nn.functional.silu(activation)
        elif self.config.activation == "gelu":
            activation = torch.nn.functional.gelu(activation, approximate="tanh")
        else:
            cpu_ops.fatrelu(gate, np.float32(self.config.activation_threshold), gate)
        residual = torch.from_numpy(s.x.copy())
        for observe in self.observers:
            observe(index, residual, activation)

    def every_neuron(self) -> CPUFFN:
        return DenseFFN(self.config, self.weights, self.float_activations, self.observers)


class DenseFFN(CPUFFN):
    """Every neuron: gate, up, act (SiLU or FATReLU), down (`cpu_layer.dense_ffn_block`)."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, float_activations: bool, observers: list):
        super().__init__(config, weights, float_activations, observers)
        self._weights: dict[int, FFNWeights] = {}
        self._blocks: dict[int, BoundCall] = {}

    def compute(self, index: int, s) -> None:
        block = self._blocks.get(index)
        if block is None:
            layer, c = self.weights.layers[index], self.config
            self._weights[index] = FFNWeights(layer.ffn_gate.raw, layer.ffn_up.raw, layer.ffn_down().raw,
                                              np.float32(c.activation_threshold), c.activation == "silu",
                                              np.float32(c.residual_scale), c.activation == "gelu",
                                              layer.post_ffw_norm, np.float32(c.rms_eps))
            block = self._blocks[index] = BoundCall(cpu_layer.dense_ffn_block(*layer.ffn_codes, self.float_activations))
        block(s.x, s.normed, self._weights[index], s.dense_ffn_scratch)

    def every_neuron(self) -> DenseFFN:
        return self


class CPUOutput:
    """logits = output(RMSNorm(x)) / logit_scale (softcapped when the model says so) for the last n_logits rows."""

    def __init__(self, config: ModelConfig, weights: PackedWeights, float_activations: bool):
        self.config, self.weights, self.float_activations = config, weights, bool(float_activations)

    def __call__(self, s) -> np.ndarray:
        c, w = self.config, self.weights
        n_logits = s.logits.shape[0]
        cpu_layer.normalize(s.x[s.tokens - n_logits:], w.output_norm, c.rms_eps, s.final, w.output.code)
        matmul(w.output, s.final, s.logits, float_activations=self.float_activations)
        if c.logit_scale != 1.0:
            s.logits /= np.float32(c.logit_scale)
        if c.logit_softcap > 0:  # cap * tanh(logits / cap)
            cap = np.float32(c.logit_softcap)
            np.tanh(s.logits / cap, out=s.logits)
            s.logits *= cap
        return s.logits.copy()
