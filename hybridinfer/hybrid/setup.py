"""The hybrid runtime's placement for an engine's options: a split file, a split solved now for --vram-budget from
an activations file, or -ngl N dense layers as llama.cpp offloads them (`placement/placement.Placement`);
`runtime/build.py` then assembles the decoder from it.
"""

from __future__ import annotations

import os

import torch

from ..model_file.config import ModelConfig
from ..errors import HybridInferError
from ..model_file.gguf_file import GGUFFile
from .placement.memory_model import GPUMemoryModel, kv_element_bytes_for
from .placement.placement import Placement
from .placement.plan import solve_split
from .placement.sizes import format_size, parse_size
from .placement.split_file import Split, load_split
from .activations_file import load_profile


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_activations_path(model_path: str) -> str:
    base = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return base + ".act.gguf"


def memory_model(model: GGUFFile, config: ModelConfig, n_ctx: int, device: str, predictors=None) -> GPUMemoryModel:
    ranks = predictors.ranks if predictors is not None else None
    return GPUMemoryModel.build(model, config, n_ctx, kv_element_bytes_for(device), ranks)


def resolve_placement(engine, split_path: str | None, vram_budget: str | None, n_gpu_layers: int | None,
                      activations_path: str | None, device: str, predictors) -> Placement:
    """The placement the options ask for (`RunOptions.check` has refused -ngl with --split/--vram-budget)."""
    if n_gpu_layers is not None:
        return Placement.of_gpu_layers(n_gpu_layers, engine.config)
    return Placement.of_split(resolve_split(engine, split_path, vram_budget, activations_path, device, predictors))


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
