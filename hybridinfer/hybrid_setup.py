"""Set up the hybrid runtime for an engine: get a split (from a file, or solved now from an activations
file for `--vram-budget`), move the GPU side to its device, and install the hybrid FFN."""

from __future__ import annotations

import os

import torch

from .errors import HybridInferError
from .hybrid_ffn import HybridFFN
from .placement.plan import solve_split
from .placement.sizes import format_size, parse_size
from .placement.split_file import Split, load_split
from .profiling import load_profile


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def element_bytes_for(device: str) -> int:
    """Bytes per GPU-side weight element: float16 on CUDA, float32 on the CPU stand-in."""
    return 2 if device.startswith("cuda") else 4


def default_activations_path(model_path: str) -> str:
    base = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return base + ".act.gguf"


def resolve_split(engine, split_path: str | None, vram_budget: str | None, activations_path: str | None,
                  device: str, predictor_params: int) -> Split:
    budget = parse_size(vram_budget) if vram_budget is not None else None
    element_bytes = element_bytes_for(device)
    if split_path is not None:
        split = load_split(split_path, engine.fingerprint)
        if budget is not None and budget < split.vram_budget:
            raise HybridInferError(f"{split_path} was made for a {format_size(split.vram_budget)} budget, more than "
                                   f"--vram-budget {format_size(budget)}; re-run `hybridinfer split` for this budget")
        if engine.n_ctx > split.n_ctx:
            raise HybridInferError(f"{split_path} was made for a context of {split.n_ctx} tokens; run with "
                                   f"-c {split.n_ctx} or less, or re-run `hybridinfer split -c {engine.n_ctx}`")
        if split.element_bytes != element_bytes:
            raise HybridInferError(f"{split_path} was made for {split.element_bytes}-byte GPU elements, but device "
                                   f"{device} stores {element_bytes}; re-run `hybridinfer split --device {device}`")
        return split
    activations_path = activations_path or default_activations_path(engine.path)
    if not os.path.exists(activations_path):
        raise HybridInferError(f"--vram-budget needs activation counts: no {activations_path}; make it with "
                               f"`hybridinfer profile -m {engine.path} -o {activations_path}` or pass --activations")
    profile = load_profile(activations_path, engine.fingerprint)
    split, _ = solve_split(engine.config, profile, budget, engine.n_ctx, element_bytes,
                           predictor_params=predictor_params)
    return split


def install_hybrid(engine, split: Split, device: str, predictors=None, dtype: torch.dtype | None = None) -> HybridFFN:
    """Move the GPU side to `device` (everything stays on the CPU when the split placed nothing there).
    GPU-side weights are float16 on CUDA and float32 on the CPU device unless `dtype` says otherwise."""
    if split.fixed_bytes == 0:
        device = "cpu"
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    engine.model.move_to(device, dtype)
    if predictors is not None:
        predictors = predictors.to(device)  # predictors stay float32
    hybrid = HybridFFN(engine.config, engine.model.weights, split.hot, device, dtype, predictors)
    engine.model.sparse_ffn = hybrid
    engine.model.time_attention = True
    return hybrid
