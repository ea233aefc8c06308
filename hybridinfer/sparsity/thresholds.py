"""A sparsity file: the per-layer CATS thresholds calibrated for one model (`calibrate.py` makes them).

CATS (arXiv 2404.08763) zeroes a SwiGLU neuron's activation SiLU(gate . x) when its magnitude is below its
layer's threshold, so the up and down rows of that neuron are skipped; the threshold of each layer is the
quantile of |SiLU(gate . x)| at the target sparsity over calibration text. The file:

    GGUF, general.architecture = "hybridinfer-sparsity"
    hybridinfer.sparsity.method                 "cats"
    hybridinfer.sparsity.target                 f32: the share of FFN activations to zero
    hybridinfer.sparsity.n_tokens               u64: calibration tokens
    hybridinfer.sparsity.thresholds             f32 [n_layer]: |SiLU(gate)| below it is zeroed
    hybridinfer.sparsity.calibration_sparsity   f32 [n_layer]: the share zeroed on the calibration text
    hybridinfer.fingerprint.*                   the model's fingerprint (fingerprint.py)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gguf
import numpy as np

from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint, open_model_artefact

ARCH = "hybridinfer-sparsity"
METHODS = ("cats",)
_KEY = "hybridinfer.sparsity."


def check_target(target: float) -> None:
    """A target sparsity is a share of activations to zero, strictly between 0 and 1."""
    if not 0.0 < target < 1.0:
        raise HybridInferError(f"--sparsity must be between 0 and 1 (a share of activations to zero), got {target}")


def path_beside(model_path: str | os.PathLike, target: float) -> str:
    """Where `sparsify` writes, and `--sparsity S` looks for, a model's file: MODEL.cats-40.sparsity.gguf."""
    model_path = str(model_path)
    base = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return f"{base}.cats-{100 * target:g}.sparsity.gguf"


@dataclass
class SparsityThresholds:
    method: str
    target: float
    n_tokens: int
    thresholds: np.ndarray  # (n_layer,) float32
    calibration_sparsity: np.ndarray  # (n_layer,) float32
    fingerprint: Fingerprint

    def summary(self) -> dict:
        return {"method": self.method, "target": self.target, "n_tokens": self.n_tokens,
                "average_sparsity": float(self.calibration_sparsity.mean()),
                "layers": [{"layer": i, "threshold": float(t), "sparsity": float(s)}
                           for i, (t, s) in enumerate(zip(self.thresholds, self.calibration_sparsity))]}


def save_thresholds(sparsity: SparsityThresholds, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, ARCH)
        writer.add_string(_KEY + "method", sparsity.method)
        writer.add_float32(_KEY + "target", float(sparsity.target))
        writer.add_uint64(_KEY + "n_tokens", int(sparsity.n_tokens))
        writer.add_array(_KEY + "thresholds", [float(t) for t in sparsity.thresholds])
        writer.add_array(_KEY + "calibration_sparsity", [float(s) for s in sparsity.calibration_sparsity])
        sparsity.fingerprint.write(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def load_thresholds(path: str | os.PathLike, model_fingerprint: Fingerprint | None = None) -> SparsityThresholds:
    """Read a sparsity file; with `model_fingerprint`, refuse one made for another model."""
    file, fingerprint = open_model_artefact(path, ARCH, "a sparsity file", "hybridinfer sparsify", model_fingerprint)
    method = file.text(_KEY + "method")
    if method not in METHODS:
        raise file.bad_value(_KEY + "method", method, f"one of {', '.join(METHODS)}")
    n_layer = fingerprint.dimensions[0]
    thresholds = np.array(file.numbers(_KEY + "thresholds", n_layer), np.float32)
    if np.any(thresholds < 0):
        raise file.bad_value(_KEY + "thresholds", thresholds.tolist(), "non-negative thresholds")
    return SparsityThresholds(method, file.number(_KEY + "target", at_least=0.0, below=1.0),
                              file.integer(_KEY + "n_tokens", 0, 2**63 - 1), thresholds,
                              np.array(file.numbers(_KEY + "calibration_sparsity", n_layer), np.float32), fingerprint)
