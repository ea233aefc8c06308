"""The one assembly point of the packed runtime: from the file, its config, the run's choices and a placement, a
`Decoder` whose layers are each (attention part, FFN part), with a boundary part where the residual stream changes
device (`parts.py` states the parts' protocol).

    CPU layer   CPUAttention or TEALAttention;  DenseFFN, SparseFFN (exact / predicted / CATS) or TEALFFN
    GPU layer   GPUAttention;                   GPUDenseFFN (-ngl) or SplitFFN (hot on the GPU, cold on the CPU)

A hybrid run's parts come from `hybrid/` (imported here only when a placement puts something on the GPU side).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGMLQuantizationType as T

from ..model_file.config import ModelConfig
from ..model_file.gguf_file import GGUFFile
from .decoder import Decoder
from .kv_types import DEFAULT_KV_TYPE, KV_TYPES, KVType
from .parts import CPUAttention, CPUOutput, DenseFFN
from .repack_cache import RepackCache
from .sparse_ffn import SparseFFN
from .teal import teal_parts
from .weights import load_packed_weights


@dataclass(frozen=True)
class Choices:
    """What computes the FFN (and TEAL's attention) of the CPU layers, what their KV cache stores, and how the GPU
    side runs."""

    exact: bool = False  # the sparse FFN over every neuron (lossless)
    predictors: object = None  # a `PredictorSet`: the sparse FFN over the predicted neurons
    sparsity: object = None  # a `SparsityThresholds` file's: CATS (the sparse FFN) or TEAL
    float_activations: bool = False
    predictor_type: T = T.Q8_0  # how the CPU packs the predictors
    predictor_cache: RepackCache | None = None
    device: str | None = None  # the GPU side's
    gpu_kernels: str | None = None
    cache_types: tuple[KVType, KVType] = (KV_TYPES[DEFAULT_KV_TYPE],) * 2  # the CPU layers' KV cache: keys', values'

    @property
    def teal(self) -> bool:
        return self.sparsity is not None and self.sparsity.zeroes_inputs  # TEAL or WINA

    @property
    def sparse(self) -> bool:
        """The CPU layers' FFN is the sparse part."""
        return bool(self.exact or self.predictors is not None or self.sparsity is not None) and not self.teal


def build_decoder(file: GGUFFile, config: ModelConfig, n_ctx: int, choices: Choices, placement=None) -> Decoder:
    """The decoder for `choices`, with `placement` (`hybrid/placement/placement.Placement`) on the GPU side."""
    c, fa = config, choices.float_activations
    weights = load_packed_weights(file, config, sparse=choices.sparse, placement=placement, teal=choices.teal)
    observers: list = []
    attention, ffn = CPUAttention(c, weights, fa), DenseFFN(c, weights, fa, observers)
    sparse_mode = None
    if choices.teal:
        attention, ffn = teal_parts(c, weights, choices.sparsity.thresholds, fa, observers,
                                    column_norms=choices.sparsity.column_norms, method=choices.sparsity.method)
        sparse_mode = ffn
    elif choices.sparse:
        ffn = sparse_mode = SparseFFN(c, weights, choices.predictors, fa, observers, choices.predictor_type,
                                      choices.predictor_cache, sparsity=choices.sparsity)
    layers = [(attention, ffn) for _ in range(c.n_layer)]
    output = CPUOutput(c, weights, fa)
    side, token_done, graphed = None, None, None
    if placement is not None and not placement.empty:
        from ..hybrid.decode_graphs import GraphedDecode, graphs_wanted
        side = _gpu_side(file, config, n_ctx, choices, placement, weights, sparse_mode)
        layers, output = _hybrid_layers(layers, output, side, placement, weights, choices)
        token_done = side.token_done
        graphed = GraphedDecode(side, layers, output) if graphs_wanted(side) else None
    return Decoder(c, weights, n_ctx, layers, output, observers, fa, side, sparse_mode, token_done,
                   choices.cache_types, graphed)


def _gpu_side(file, config, n_ctx, choices: Choices, placement, weights, sparse_mode):
    from ..hybrid.gpu_side import GPUSide
    split_layers = placement.split_ffn_layers
    down_t = [layer.ffn_down_t() if i in split_layers else None for i, layer in enumerate(weights.layers)]
    return GPUSide(file, config, placement, torch.device(choices.device), n_ctx, choices.gpu_kernels,
                   choices.predictors if split_layers else None, down_t,
                   sparse_mode.stats if sparse_mode is not None else None)


def _hybrid_layers(cpu_layers: list[tuple], cpu_output, side, placement, weights, choices: Choices):
    """The layers with the GPU side's parts for its layers, boundaries where the stream changes device, and the
    CPU parts timed on the run's clock."""
    from ..hybrid.gpu_parts import GPUAttention, GPUDenseFFN, GPUOutput, TimedOnCPU, ToDevice, ToHost
    from ..hybrid.split_ffn import ColdHalf, SplitFFN
    attention, dense = GPUAttention(side), GPUDenseFFN(side)
    split = None
    if placement.split_ffn_layers:
        cold = ColdHalf(side.config, weights, {i: placement.hot[i] for i in placement.split_ffn_layers},
                        side.device, choices.float_activations)
        split = SplitFFN(side, cold)
    to_device, to_host = ToDevice(side), ToHost(side)
    layers, stream_on_device = [], False
    for index, (cpu_attention, cpu_ffn) in enumerate(cpu_layers):
        if index in side.layers:
            parts = [attention, dense if index in placement.dense_layers else split]
            if not stream_on_device:
                parts.insert(0, to_device)
            stream_on_device = True
        else:
            parts = [TimedOnCPU(cpu_attention, side), TimedOnCPU(cpu_ffn, side)]
            if stream_on_device:
                layers[-1] = layers[-1] + (to_host,)
            stream_on_device = False
        layers.append(tuple(parts))
    if placement.output_on_gpu:
        return layers, GPUOutput(side)
    if stream_on_device:
        layers[-1] = layers[-1] + (to_host,)
    return layers, TimedOnCPU(cpu_output, side)
