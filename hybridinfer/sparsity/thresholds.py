"""A sparsity file: the magnitude thresholds calibrated for one model (`calibrate.py` makes them), per layer and
per site (a vector of the forward pass whose small entries are zeroed).

  cats  (arXiv 2404.08763) one site per layer, the FFN activation SiLU(gate . x): a neuron whose |SiLU| is below
        the threshold is dropped, so its up and down rows are skipped
  teal  (arXiv 2408.14690) four sites per layer, the inputs of every projection: the normed residual (Q/K/V),
        the attention output (output projection), the normed residual (gate/up) and SiLU(gate) * up (down);
        an entry below the threshold is zeroed, so that weight column is skipped
Each threshold is the quantile of its site's magnitudes at the target sparsity over calibration text. The file:

    GGUF, general.architecture = "hybridinfer-sparsity"
    hybridinfer.sparsity.method                 "cats" or "teal"
    hybridinfer.sparsity.target                 f32: the share of each site's entries to zero
    hybridinfer.sparsity.n_tokens               u64: calibration tokens
    hybridinfer.sparsity.thresholds             f32 [n_layer * n_sites] (layer-major): magnitudes below are zeroed
    hybridinfer.sparsity.calibration_sparsity   f32 [n_layer * n_sites]: the share zeroed on the calibration text
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
SITES = {  # each method's sites, in the order of a layer's thresholds
    "cats": ("ffn_activation",),
    "teal": ("attn_input", "attn_output_input", "ffn_input", "ffn_down_input"),
}
METHODS = tuple(SITES)
_KEY = "hybridinfer.sparsity."


def check_target(target: float) -> None:
    """A target sparsity is a share of activations to zero, strictly between 0 and 1."""
    if not 0.0 < target < 1.0:
        raise HybridInferError(f"--sparsity must be between 0 and 1 (a share of activations to zero), got {target}")


def path_beside(model_path: str | os.PathLike, target: float, method: str = "cats") -> str:
    """Where `sparsify` writes, and `--sparsity S` looks for, a model's file: MODEL.cats-40.sparsity.gguf
    (MODEL.teal-40.sparsity.gguf for TEAL)."""
    model_path = str(model_path)
    base = model_path[:-5] if model_path.endswith(".gguf") else model_path
    return f"{base}.{method}-{100 * target:g}.sparsity.gguf"


@dataclass
class SparsityThresholds:
    method: str
    target: float
    n_tokens: int
    thresholds: np.ndarray  # (n_layer, n_sites) float32: SITES[method]'s thresholds of each layer
    calibration_sparsity: np.ndarray  # (n_layer, n_sites) float32
    fingerprint: Fingerprint

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES[self.method]

    def summary(self) -> dict:
        """Per layer its threshold and calibration sparsity (CATS), or per site of it (TEAL: "thresholds" and
        "sparsity" are then {site: value})."""
        def per_site(row):
            return float(row[0]) if self.method == "cats" else {s: float(v) for s, v in zip(self.sites, row)}

        return {"method": self.method, "target": self.target, "n_tokens": self.n_tokens,
                "average_sparsity": float(self.calibration_sparsity.mean()),
                "layers": [{"layer": i, "threshold": per_site(t), "sparsity": per_site(s)}
                           for i, (t, s) in enumerate(zip(self.thresholds, self.calibration_sparsity))]}


def save_thresholds(sparsity: SparsityThresholds, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, ARCH)
        writer.add_string(_KEY + "method", sparsity.method)
        writer.add_float32(_KEY + "target", float(sparsity.target))
        writer.add_uint64(_KEY + "n_tokens", int(sparsity.n_tokens))
        writer.add_array(_KEY + "thresholds", [float(t) for t in sparsity.thresholds.reshape(-1)])
        writer.add_array(_KEY + "calibration_sparsity", [float(s) for s in sparsity.calibration_sparsity.reshape(-1)])
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
    shape = (fingerprint.dimensions[0], len(SITES[method]))  # (n_layer, n_sites)
    thresholds = np.array(file.numbers(_KEY + "thresholds", shape[0] * shape[1]), np.float32).reshape(shape)
    if np.any(thresholds < 0):
        raise file.bad_value(_KEY + "thresholds", thresholds.reshape(-1).tolist(), "non-negative thresholds")
    reached = np.array(file.numbers(_KEY + "calibration_sparsity", shape[0] * shape[1]), np.float32).reshape(shape)
    return SparsityThresholds(method, file.number(_KEY + "target", at_least=0.0, below=1.0),
                              file.integer(_KEY + "n_tokens", 0, 2**63 - 1), thresholds, reached, fingerprint)
