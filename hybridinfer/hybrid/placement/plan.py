"""Solve a split for a GPU memory budget: the layers whose attention goes to the GPU (the last ones first, as
llama.cpp offloads them), then the output projection once every layer is there, then the hot neurons of those
layers that fit in what is left (the solver picks them by activation frequency)."""

from __future__ import annotations

import numpy as np

from ...model_file.config import ModelConfig
from ...plotting import pyplot
from ...runtime.activations import ActivationProfile
from .memory_model import GPUMemoryModel
from .solver import place
from .split_file import Split


def place_layers(memory: GPUMemoryModel, vram_budget: int) -> tuple[list[int], bool, int]:
    """(GPU layers ascending, output on the GPU, bytes used) for the budget; no layer fits: ([], False, 0)."""
    used, layers = memory.workspace, []
    for index in reversed(range(len(memory.layer))):
        if used + memory.layer[index] > vram_budget:
            break
        used += memory.layer[index]
        layers.append(index)
    if not layers:
        return [], False, 0
    output = len(layers) == len(memory.layer) and used + memory.output <= vram_budget
    return sorted(layers), output, used + (memory.output if output else 0)


def gpu_layers_for(memory: GPUMemoryModel, vram_budget: int) -> int:
    """The largest llama.cpp -ngl whose dense layers (the last ones, then the output past the last layer) fit."""
    used, n = memory.workspace, 0
    for index in reversed(range(len(memory.layer))):
        cost = memory.layer[index] + memory.dense_ffn[index]
        if used + cost > vram_budget:
            return n
        used, n = used + cost, n + 1
    return n + 1 if used + memory.output <= vram_budget else n


def solve_split(config: ModelConfig, profile: ActivationProfile, memory: GPUMemoryModel, vram_budget: int,
                group: int = 256) -> Split:
    """The split for `vram_budget` bytes. A budget that holds no layer's attention places nothing on the GPU:
    the runtime then runs everything on the CPU."""
    gpu_layers, output, fixed = place_layers(memory, vram_budget)
    frequency = profile.frequency[gpu_layers] if gpu_layers else np.zeros((0, config.n_ff))
    placement = place(frequency, [memory.neuron[i] for i in gpu_layers], vram_budget - fixed, group)
    hot = [np.zeros(0, dtype=np.int64) for _ in range(config.n_layer)]
    for index, neurons in zip(gpu_layers, placement.hot):
        hot[index] = neurons
    total = float(profile.frequency.sum())
    gpu_share = placement.value / total if total > 0 else 0.0
    return Split(hot, config.n_ff, vram_budget, memory.n_ctx, memory.kv_element_bytes, group, fixed,
                 placement.hot_bytes, gpu_share, profile.fingerprint, gpu_layers, output)


def split_report(split: Split, memory: GPUMemoryModel, profile: ActivationProfile, config: ModelConfig) -> dict:
    """Per-layer placement (attention on the GPU, hot share, expected GPU coverage) and bytes per side."""
    frequency = profile.frequency
    layers = []
    for i, hot in enumerate(split.hot):
        total = float(frequency[i].sum())
        layers.append({"layer": i, "attention_on_gpu": i in split.gpu_layers, "hot_neurons": int(len(hot)),
                       "hot_share": len(hot) / config.n_ff,
                       "gpu_activation_share": float(frequency[i][hot].sum()) / total if total else 0.0})
    n_hot = sum(len(h) for h in split.hot)
    cold_bytes = sum((config.n_ff - len(hot)) * memory.neuron[i] for i, hot in enumerate(split.hot))
    return {
        "vram_budget": split.vram_budget,
        "all_on_cpu": split.all_on_cpu,
        "gpu_layers": list(split.gpu_layers),
        "output_on_gpu": split.output_on_gpu,
        "memory_model": memory.as_dict(),
        "gpu_bytes": split.fixed_bytes + split.hot_bytes,
        "cpu_ffn_bytes": cold_bytes,
        "hot_neurons": n_hot,
        "gpu_share": split.gpu_share,
        "layers": layers,
    }


def plot_split(report: dict, path) -> None:
    plt = pyplot()

    layers = report["layers"]
    index = np.arange(len(layers))
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.bar(index - 0.2, [row["hot_share"] for row in layers], width=0.4, label="neurons on GPU (share)")
    axis.bar(index + 0.2, [row["gpu_activation_share"] for row in layers], width=0.4,
             label="activations served by GPU (expected share)")
    on_gpu = [row["layer"] for row in layers if row["attention_on_gpu"]]
    axis.scatter(on_gpu, [1.02] * len(on_gpu), marker="v", color="black", label="attention on GPU")
    axis.set(xlabel="layer", ylim=(0, 1.06), title=f"Split for {report['vram_budget'] / 2**30:.2f} GiB: "
             f"{100 * report['gpu_share']:.1f}% of FFN activations on the GPU")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
