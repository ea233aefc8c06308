"""Set up the hybrid runtime for an engine: decide what goes to the GPU side (a split file, a split solved now
for --vram-budget from an activations file, or -ngl N dense layers as llama.cpp offloads them), pack the rest
for the CPU, and plug the GPU side into the packed decoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model_file.config import ModelConfig
from ..errors import HybridInferError
from ..model_file.gguf_file import GGUFFile
from .placement.memory_model import GPUMemoryModel, kv_element_bytes_for
from .placement.plan import solve_split
from .placement.sizes import format_size, parse_size
from .placement.split_file import Split, load_split
from .activations_file import load_profile


@dataclass
class Offload:
    """What the GPU side holds: the attention of `gpu_layers` (with KV cache and predictor), the whole FFN of
    `dense_layers` (-ngl), the hot neurons of the others' FFNs, and maybe the output projection."""

    gpu_layers: list[int] = field(default_factory=list)
    dense_layers: set[int] = field(default_factory=set)
    hot: dict[int, np.ndarray] = field(default_factory=dict)
    output_on_gpu: bool = False
    split: Split | None = None

    @property
    def empty(self) -> bool:
        return not self.gpu_layers

    @property
    def split_layers(self) -> bool:
        """Some GPU layer shares its FFN with the CPU (needs a sparse FFN)."""
        return any(i not in self.dense_layers for i in self.gpu_layers)

    @classmethod
    def of_split(cls, split: Split) -> Offload:
        return cls(list(split.gpu_layers), set(), {i: split.hot[i] for i in split.gpu_layers}, split.output_on_gpu,
                   split)

    @classmethod
    def of_gpu_layers(cls, n_gpu_layers: int, config: ModelConfig) -> Offload:
        """llama.cpp's -ngl: the last N layers whole on the GPU, and the output projection when N > n_layer."""
        if n_gpu_layers < 0:
            raise HybridInferError(f"-ngl/--n-gpu-layers must be 0 or more, got {n_gpu_layers}")
        layers = list(range(max(0, config.n_layer - n_gpu_layers), config.n_layer))
        return cls(layers, set(layers), {}, n_gpu_layers > config.n_layer)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_activations_path(model_path: str) -> str:
    base = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return base + ".act.gguf"


def memory_model(model: GGUFFile, config: ModelConfig, n_ctx: int, device: str, predictors=None) -> GPUMemoryModel:
    ranks = predictors.ranks if predictors is not None else None
    return GPUMemoryModel.build(model, config, n_ctx, kv_element_bytes_for(device), ranks)


def resolve_offload(engine, split_path: str | None, vram_budget: str | None, n_gpu_layers: int | None,
                    activations_path: str | None, device: str, predictors) -> Offload:
    chosen = [name for name, value in (("--split", split_path), ("--vram-budget", vram_budget),
                                        ("-ngl", n_gpu_layers)) if value is not None]
    if len(chosen) > 1 and chosen != ["--split", "--vram-budget"]:
        raise HybridInferError(f"{' and '.join(chosen)} exclude each other: -ngl offloads whole dense layers, "
                               "--vram-budget/--split place hot neurons; choose one")
    if n_gpu_layers is not None:
        return Offload.of_gpu_layers(n_gpu_layers, engine.config)
    return Offload.of_split(resolve_split(engine, split_path, vram_budget, activations_path, device, predictors))


def resolve_split(engine, split_path: str | None, vram_budget: str | None, activations_path: str | None,
                  device: str, predictors) -> Split:
    budget = parse_size(vram_budget) if vram_budget is not None else None
    kv_bytes = kv_element_bytes_for(device)
    if split_path is not None:
        split = load_split(split_path, engine.fingerprint)
        if budget is not None and budget < split.vram_budget:
            raise HybridInferError(f"{split_path} was made for a {format_size(split.vram_budget)} budget, more than "
                                   f"--vram-budget {format_size(budget)}; re-run `hybridinfer split` for this budget")
        if engine.n_ctx > split.n_ctx:
            raise HybridInferError(f"{split_path} was made for a context of {split.n_ctx} tokens; run with "
                                   f"-c {split.n_ctx} or less, or re-run `hybridinfer split -c {engine.n_ctx}`")
        if split.kv_element_bytes != kv_bytes:
            raise HybridInferError(f"{split_path} was made for {split.kv_element_bytes}-byte KV cache elements, but "
                                   f"device {device} stores {kv_bytes}; re-run `hybridinfer split --device {device}`")
        return split
    activations_path = activations_path or default_activations_path(engine.path)
    if not os.path.exists(activations_path):
        raise HybridInferError(f"--vram-budget needs activation counts: no {activations_path}; make it with "
                               f"`hybridinfer profile -m {engine.path} -o {activations_path}` or pass --activations")
    profile = load_profile(activations_path, engine.fingerprint)
    memory = memory_model(engine.file, engine.config, engine.n_ctx, device, predictors)
    return solve_split(engine.config, profile, memory, budget)


def install_gpu_side(engine, offload: Offload, device: str, predictors, kernels: str | None = None):
    """Build the GPU side (and the CPU half of split layers) over the engine's packed model."""
    from .cpu_half import CPUHalf
    from .gpu_side import GPUSide
    model, device = engine.model, torch.device(device)
    sparse = engine.sparse_ffn  # the packed sparse FFN of the CPU layers, or None (-ngl's dense layers)
    cpu_half = None
    if offload.split_layers:
        cpu_half = CPUHalf(engine.config, sparse, model.weights.layers, offload.hot, device)
    down_t = sparse.down_t if sparse is not None else None
    side = GPUSide(engine.file, engine.config, offload, device, model.n_ctx, kernels, predictors, cpu_half, down_t)
    side.cpu_layers_stats = sparse.stats if sparse is not None else None
    model.offload = side
    return side
