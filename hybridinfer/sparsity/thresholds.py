"""A sparsity file: the magnitude thresholds calibrated for one model (`calibrate.py` makes them), per layer and
per site (a vector of the forward pass whose small entries are zeroed).

  cats  (arXiv 2404.08763) one site per layer, the FFN activation act(gate . x) (SiLU or GELU): a neuron whose
        |act| is below the threshold is dropped, so its up and down rows are skipped
  teal  (arXiv 2408.14690) four sites per layer, the inputs of every projection: the normed residual (Q/K/V),
        the attention output (output projection), the normed residual (gate/up) and act(gate) * up (down);
        an entry below the threshold is zeroed, so that weight column is skipped
  wina  (arXiv 2505.19427) TEAL's four sites, but an entry x_i is zeroed when |x_i| * ||W[:, i]||_2 is below the
        threshold, the norm of the weight column it multiplies (of Q/K/V stacked, of gate/up stacked)
  chess (arXiv 2409.01366, channel-wise thresholding) CATS's site, but neuron i is dropped when |act_i| * s_i is
        below the layer's threshold, s_i a per-neuron scale calibrated with it (`chess.py`)
Each threshold is the quantile of its site's magnitudes (WINA: of the products) at the site's target sparsity over
calibration text: the target itself (allocation "uniform"), or a share chosen per site by `greedy.py` (allocation
"greedy") so that the model-wide share of weights skipped is the target. The file:

    GGUF, general.architecture = "hybridinfer-sparsity"
    hybridinfer.sparsity.method                 "cats", "teal", "wina" or "chess"
    hybridinfer.sparsity.target                 f32: the share of values (TEAL, WINA: of weights) to zero
    hybridinfer.sparsity.allocation             "uniform" or "greedy" (absent: uniform)
    hybridinfer.sparsity.n_tokens               u64: calibration tokens
    hybridinfer.sparsity.thresholds             f32 [n_layer * n_sites] (layer-major): magnitudes below are zeroed
    hybridinfer.sparsity.calibration_sparsity   f32 [n_layer * n_sites]: the share zeroed on the calibration text
    hybridinfer.fingerprint.*                   the model's fingerprint (fingerprint.py)
    tensors blk.I.SITE_column_norm              f32 (site's input width,): WINA's column norms of layer I's site
    tensors blk.I.ffn_activation_neuron_scale   f32 (n_ff,): CHESS's per-neuron scales of layer I
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gguf
import numpy as np

from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..model_file.dequantize import dequantize
from ..model_file.fingerprint import Fingerprint, open_model_artefact
from ..model_file.tensor_shapes import block_name

ARCH = "hybridinfer-sparsity"
SITES = {  # each method's sites, in the order of a layer's thresholds
    "cats": ("ffn_activation",),
    "teal": ("attn_input", "attn_output_input", "ffn_input", "ffn_down_input"),
    "wina": ("attn_input", "attn_output_input", "ffn_input", "ffn_down_input"),
    "chess": ("ffn_activation",),
}
METHODS = tuple(SITES)
INPUT_METHODS = ("teal", "wina")  # the methods that zero the inputs of every projection
ALLOCATIONS = ("uniform", "greedy")
_KEY = "hybridinfer.sparsity."


def check_target(target: float) -> None:
    """A target sparsity is a share of activations to zero, strictly between 0 and 1."""
    if not 0.0 < target < 1.0:
        raise HybridInferError(f"--sparsity must be between 0 and 1 (a share of activations to zero), got {target}")


def path_beside(model_path: str | os.PathLike, target: float, method: str = "cats") -> str:
    """Where `sparsify` writes, and `--sparsity S` looks for, a model's file: MODEL.cats-40.sparsity.gguf
    (MODEL.teal-40.sparsity.gguf for TEAL, MODEL.wina-40.sparsity.gguf for WINA)."""
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
    column_norms: list[tuple[np.ndarray, ...]] | None = None  # WINA: per layer, per site (input width,) float32
    allocation: str = "uniform"
    neuron_scales: list[np.ndarray] | None = None  # CHESS: per layer (n_ff,) float32, |act_i| * scale_i thresholded

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES[self.method]

    @property
    def zeroes_inputs(self) -> bool:
        """TEAL and WINA: the inputs of every projection (the TEAL parts); CATS: the FFN activation."""
        return self.method in INPUT_METHODS

    def summary(self) -> dict:
        """Per layer its threshold and calibration sparsity (CATS), or per site of it (TEAL: "thresholds" and
        "sparsity" are then {site: value})."""
        def per_site(row):
            return float(row[0]) if not self.zeroes_inputs else {s: float(v) for s, v in zip(self.sites, row)}

        return {"method": self.method, "target": self.target, "allocation": self.allocation, "n_tokens": self.n_tokens,
                "average_sparsity": float(self.calibration_sparsity.mean()),
                "layers": [{"layer": i, "threshold": per_site(t), "sparsity": per_site(s)}
                           for i, (t, s) in enumerate(zip(self.thresholds, self.calibration_sparsity))]}


def save_thresholds(sparsity: SparsityThresholds, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, ARCH)
        writer.add_string(_KEY + "method", sparsity.method)
        writer.add_float32(_KEY + "target", float(sparsity.target))
        writer.add_string(_KEY + "allocation", sparsity.allocation)
        writer.add_uint64(_KEY + "n_tokens", int(sparsity.n_tokens))
        writer.add_array(_KEY + "thresholds", [float(t) for t in sparsity.thresholds.reshape(-1)])
        writer.add_array(_KEY + "calibration_sparsity", [float(s) for s in sparsity.calibration_sparsity.reshape(-1)])
        sparsity.fingerprint.write(writer)
        for i, norms in enumerate(sparsity.column_norms or []):
            for site, norm in zip(sparsity.sites, norms):
                writer.add_tensor(column_norm_name(i, site), np.ascontiguousarray(norm, np.float32))
        for i, scales in enumerate(sparsity.neuron_scales or []):
            writer.add_tensor(neuron_scale_name(i), np.ascontiguousarray(scales, np.float32))
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
    allocation = file.text(_KEY + "allocation", "uniform")
    if allocation not in ALLOCATIONS:
        raise file.bad_value(_KEY + "allocation", allocation, f"one of {', '.join(ALLOCATIONS)}")
    norms = [tuple(_column_norm(file, i, site) for site in SITES[method]) for i in range(shape[0])] \
        if method == "wina" else None
    scales = [_neuron_scales(file, i) for i in range(shape[0])] if method == "chess" else None
    return SparsityThresholds(method, file.number(_KEY + "target", at_least=0.0, below=1.0),
                              file.integer(_KEY + "n_tokens", 0, 2**63 - 1), thresholds, reached, fingerprint, norms,
                              allocation, scales)


def column_norm_name(layer: int, site: str) -> str:
    """The tensor of WINA's column norms of one layer's site: "blk.I.SITE_column_norm"."""
    return block_name(f"{site}_column_norm", layer)


def neuron_scale_name(layer: int) -> str:
    """The tensor of CHESS's per-neuron scales of one layer: "blk.I.ffn_activation_neuron_scale"."""
    return block_name("ffn_activation_neuron_scale", layer)


def _column_norm(file, layer: int, site: str) -> np.ndarray:
    """WINA's column norms of one layer's site, checked: a vector of finite non-negative numbers."""
    return _weights_vector(file, column_norm_name(layer, site), "wina", "column norms")


def _neuron_scales(file, layer: int) -> np.ndarray:
    """CHESS's per-neuron scales of one layer, checked: a vector of finite non-negative numbers."""
    return _weights_vector(file, neuron_scale_name(layer), "chess", "neuron scales")


def _weights_vector(file, name: str, method: str, what: str) -> np.ndarray:
    """The vector tensor `name` of a `method` sparsity file, checked: finite non-negative numbers."""
    try:
        tensor = file.tensor(name)
    except (KeyError, HybridInferError):
        raise HybridInferError(f"{file.path}: a {method.upper()} sparsity file without its tensor {name}; make it "
                               f"again with `hybridinfer sparsify --method {method}`") from None
    vector = np.ascontiguousarray(dequantize(tensor), np.float32).reshape(-1)
    if not np.all(np.isfinite(vector)) or np.any(vector < 0):
        raise HybridInferError(f"{file.path}: tensor {name} holds negative or non-finite {what}")
    return vector
