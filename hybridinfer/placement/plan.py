"""Solve a split: the memory model gives the bytes left for hot neurons, the solver picks them."""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..profiling import ActivationProfile
from .memory_model import GPUMemoryModel
from .solver import place
from .split_file import Split


def solve_split(config: ModelConfig, profile: ActivationProfile, vram_budget: int, n_ctx: int,
                element_bytes: int, group: int = 256, predictor_params: int = 0) -> tuple[Split, GPUMemoryModel]:
    """The split for `vram_budget` bytes. A budget below the fixed part places nothing on the GPU: the
    runtime then runs everything on the CPU."""
    memory = GPUMemoryModel.build(config, n_ctx, element_bytes, predictor_params)
    capacity = vram_budget - memory.fixed
    placement = place(profile.frequency, memory.neuron_bytes, capacity, group)
    split = Split(placement.hot, config.n_ff, vram_budget, n_ctx, element_bytes, group,
                  memory.fixed if capacity >= 0 else 0, placement.hot_bytes, placement.gpu_share,
                  profile.fingerprint)
    return split, memory


def split_report(split: Split, memory: GPUMemoryModel, profile: ActivationProfile, config: ModelConfig) -> dict:
    """Per-layer hot share and GPU coverage, bytes per side (CPU side: cold neurons and token embeddings)."""
    frequency = profile.frequency
    layers = []
    for i, hot in enumerate(split.hot):
        total = float(frequency[i].sum())
        layers.append({"layer": i, "hot_neurons": int(len(hot)), "hot_share": len(hot) / config.n_ff,
                       "gpu_activation_share": float(frequency[i][hot].sum()) / total if total else 0.0})
    n_hot = sum(len(h) for h in split.hot)
    cold_neurons = config.n_layer * config.n_ff - n_hot
    return {
        "vram_budget": split.vram_budget,
        "all_on_cpu": split.fixed_bytes == 0,
        "memory_model": memory.as_dict(),
        "gpu_bytes": split.fixed_bytes + split.hot_bytes,
        "cpu_ffn_bytes": cold_neurons * 3 * config.n_embd * 4,
        "hot_neurons": n_hot,
        "gpu_share": split.gpu_share,
        "layers": layers,
    }


def plot_split(report: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    index = np.arange(len(layers))
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.bar(index - 0.2, [row["hot_share"] for row in layers], width=0.4, label="neurons on GPU (share)")
    axis.bar(index + 0.2, [row["gpu_activation_share"] for row in layers], width=0.4,
             label="activations served by GPU (expected share)")
    axis.set(xlabel="layer", ylim=(0, 1), title=f"Split for {report['vram_budget'] / 2**30:.2f} GiB: "
             f"{100 * report['gpu_share']:.1f}% of FFN activations on the GPU")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
