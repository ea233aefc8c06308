"""The activations file: per-neuron activation counts (`runtime/activations.py` counts them) on disk.

A neuron fires for a token when its activation act(gate . x) is non-zero, i.e. above the FATReLU threshold.
The counts decide which neurons are hot (kept on the GPU) and are stored in an activations file:

    GGUF, general.architecture = "hybridinfer-activations"
    hybridinfer.activations.n_tokens   u64: tokens counted
    hybridinfer.fingerprint.*          the model's fingerprint (fingerprint.py)
    blk.{i}.activation_count           i32 [n_ff]: tokens for which neuron j of layer i fired

They can also be exported in PowerInfer's layout: activation/activation_{i}.pt, a 1-D tensor of counts.
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import torch

from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint, open_model_artefact
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import ACTIVATION_COUNT, block_name
from ..plotting import pyplot
from ..runtime.activations import ActivationProfile

ARCH = "hybridinfer-activations"
N_TOKENS_KEY = "hybridinfer.activations.n_tokens"


def save_profile(profile: ActivationProfile, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, ARCH)
        writer.add_uint64(N_TOKENS_KEY, profile.n_tokens)
        profile.fingerprint.write(writer)
        for i, layer_counts in enumerate(profile.counts):
            writer.add_tensor(block_name(ACTIVATION_COUNT, i), layer_counts.astype(np.int32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def load_profile(path: str | os.PathLike, model_fingerprint: Fingerprint | None = None) -> ActivationProfile:
    """Read an activations file; with `model_fingerprint`, refuse one made for another model."""
    file, fingerprint = open_model_artefact(path, ARCH, "an activations file", "hybridinfer profile", model_fingerprint)
    n_layer, _, n_ff = fingerprint.dimensions
    counts = np.stack([_counts(file, i, n_ff) for i in range(n_layer)])
    return ActivationProfile(counts, file.integer(N_TOKENS_KEY, 0, 2**63 - 1), fingerprint)


def _counts(file: GGUFFile, layer: int, n_ff: int) -> np.ndarray:
    tensor = file.tensor(block_name(ACTIVATION_COUNT, layer))
    if tensor.shape != (n_ff,) or tensor.type.name not in ("I8", "I16", "I32", "I64"):
        raise HybridInferError(f"{file.path}: tensor {tensor.name} is {tensor.type.name} {tensor.shape}, expected "
                               f"{n_ff} integer counts; the file is corrupt: run `hybridinfer profile` again")
    return np.asarray(tensor.raw, dtype=np.int64)


def export_powerinfer(profile: ActivationProfile, directory: str | os.PathLike) -> Path:
    """Write PowerInfer's activation/activation_{i}.pt files (1-D count tensors) under `directory`."""
    target = Path(directory) / "activation"
    target.mkdir(parents=True, exist_ok=True)
    for i, layer_counts in enumerate(profile.counts):
        torch.save(torch.from_numpy(layer_counts.copy()), target / f"activation_{i}.pt")
    return target


def plot_profile(profile: ActivationProfile, path: str | os.PathLike) -> None:
    """Sorted activation-frequency curves and cumulative coverage per layer, as a PNG."""
    plt = pyplot()

    frequency = -np.sort(-profile.frequency, axis=1)
    share = np.arange(1, frequency.shape[1] + 1) / frequency.shape[1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 1, len(frequency)))
    for i, (curve, color) in enumerate(zip(frequency, colors)):
        left.plot(share, curve, color=color, lw=1, label=f"layer {i}" if i in (0, len(frequency) - 1) else None)
        coverage = np.cumsum(curve) / max(curve.sum(), 1e-12)
        right.plot(share, coverage, color=color, lw=1)
    left.set(xlabel="neurons, most active first (share of layer)", ylabel="activation frequency",
             title="Per-neuron activation frequency")
    left.legend()
    right.set(xlabel="neurons, most active first (share of layer)", ylabel="share of all activations covered",
              title=f"Cumulative coverage ({profile.n_tokens} tokens)")
    right.axvline(0.2, color="grey", ls=":")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
