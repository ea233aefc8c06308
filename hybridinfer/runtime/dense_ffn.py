"""The FFN parts the packed decoder plugs in (`PackedTransformer.ffn`), and the dense one.

One protocol, `part(index, layer, b)`: for layer `index`, b.x (T, n_embd) += residual_scale * FFN(b.normed),
where b (`decoder.Buffers`) holds b.normed = RMSNorm(b.x) with its int8 blocks, and b.gate, b.up, b.hidden,
b.block_out (T, ...) as scratch. `stats` counts neurons read and fired (None: every neuron is), `predictors` is
the predictor set a part reads (or None).

  DenseFFN          every neuron: gate, up, act (SiLU or FATReLU), down (this file)
  PackedSparseFFN   `sparse_ffn.py`: exact (ReLU zeros skipped, lossless), predicted (a predictor picks first)
                    or CATS (SiLU models' calibrated thresholds)
  PackedTEAL        `teal.py`: TEAL (zeroed projection inputs), which is the decoder's `inputs` part too
A layer the hybrid runtime places on the GPU side is not run here at all: `decoder.py` hands the residual stream
to `hybrid/gpu_side.py` for the whole layer, whose split FFN shares the sparse part's CPU buffers and down_t.
"""

from __future__ import annotations

import numpy as np

from ..kernels import cpu_layer
from ..model_file.config import ModelConfig
from .weights import PackedLayer


class DenseFFN:
    stats = None
    predictors = None

    def __init__(self, config: ModelConfig, float_activations: bool = False):
        self.config, self.float_activations = config, bool(float_activations)

    def __call__(self, index: int, layer: PackedLayer, b) -> None:
        c = self.config
        block = cpu_layer.dense_ffn_block(*layer.ffn_codes, self.float_activations)
        block(b.x, b.normed, layer.ffn_gate.raw, layer.ffn_up.raw, layer.ffn_down().raw, c.activation == "silu",
              np.float32(c.activation_threshold), b.gate, b.up, b.hidden, b.block_out, np.float32(c.residual_scale))
