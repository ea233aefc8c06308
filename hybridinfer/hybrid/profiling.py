"""Per-neuron activation frequencies: how often each FFN neuron fires, counted over calibration text.

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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

import gguf
import numpy as np
import torch

from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint, open_model_artefact
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import ACTIVATION_COUNT, block_name

if TYPE_CHECKING:  # the engine imports the hybrid runtime, which reads profiles: no import back
    from ..engine import Engine

ARCH = "hybridinfer-activations"
N_TOKENS_KEY = "hybridinfer.activations.n_tokens"


@dataclass
class ActivationProfile:
    counts: np.ndarray  # (n_layer, n_ff) int64
    n_tokens: int
    fingerprint: Fingerprint

    @property
    def frequency(self) -> np.ndarray:
        """(n_layer, n_ff): share of tokens for which each neuron fired."""
        return self.counts / max(self.n_tokens, 1)

    def layer_sparsity(self) -> np.ndarray:
        """(n_layer,): share of (token, neuron) activations that were zero."""
        return 1.0 - self.frequency.mean(axis=1)

    def layer_skew(self, top_share: float = 0.2) -> np.ndarray:
        """(n_layer,): share of all activations covered by the `top_share` most active neurons of each layer."""
        ordered = -np.sort(-self.counts, axis=1)
        top = max(1, int(round(top_share * self.counts.shape[1])))
        totals = np.maximum(ordered.sum(axis=1), 1)
        return ordered[:, :top].sum(axis=1) / totals

    def summary(self) -> dict:
        sparsity, skew = self.layer_sparsity(), self.layer_skew()
        return {"n_tokens": self.n_tokens, "average_sparsity": float(sparsity.mean()),
                "average_top20_coverage": float(skew.mean()),
                "layers": [{"layer": i, "sparsity": float(s), "top20_coverage": float(k)}
                           for i, (s, k) in enumerate(zip(sparsity, skew))]}


def profile_activations(engine: Engine, chunks: list[list[int]],
                        on_chunk: Callable[[int], None] | None = None) -> ActivationProfile:
    """Run `chunks` (token lists) through the dense model, counting firing neurons per layer."""
    config = engine.config
    counts = torch.zeros((config.n_layer, config.n_ff), dtype=torch.int64)

    def count(index: int, residual: torch.Tensor, activation: torch.Tensor) -> None:
        counts[index] += (activation != 0).sum(dim=0)

    run_observed(engine, chunks, count, on_chunk)
    return ActivationProfile(counts.numpy(), sum(map(len, chunks)), engine.fingerprint)


def run_observed(engine: Engine, chunks: list[list[int]], observer: Callable,
                 on_chunk: Callable[[int], None] | None = None) -> None:
    """Run `chunks` (token lists) through the dense model with `observer(layer, residual, activation)` called
    for every layer (`PackedTransformer.observers`); `on_chunk(tokens)` after each chunk."""
    engine.model.observers.append(observer)
    try:
        run_dense(engine, chunks, on_chunk)
    finally:
        engine.model.observers.remove(observer)


def run_dense(engine: Engine, chunks: list[list[int]], on_chunk: Callable[[int], None] | None = None,
              plugged: Callable[[], ContextManager] = nullcontext) -> None:
    """Run `chunks` (token lists) through the dense model, with `plugged()` entered inside `every_neuron` (a part
    that observes the dense model: TEAL calibration); `on_chunk(tokens)` after each chunk."""
    with engine.every_neuron(), plugged():
        for chunk in chunks:
            engine.logits(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))


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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a one-line error naming the install when it is missing."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise HybridInferError("--plot needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


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
