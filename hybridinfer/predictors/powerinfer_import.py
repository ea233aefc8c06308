"""Import PowerInfer's predictors: a predictor directory, or the fc1/fc2 tensors inside a PowerInfer GGUF.

A PowerInfer predictor directory holds `model_{i}.pt` for layer i, each a torch state dict
{"fc1.weight": (D, n_embd), "fc2.weight": (n_ff, D)}, and optionally `config.json` {"sparse_threshold": t}
giving every layer's threshold (absent: 0). Files are ordered by their number (model_10 after model_2).
A PowerInfer model GGUF (magic PWRI) holds the same tensors as `blk.{i}.fc1.weight` / `blk.{i}.fc2.weight`
(torch order as above) and the threshold under `powerinfer.sparse_threshold`.
Either way the predictors are checked against the model's layer count and widths.
"""

from __future__ import annotations

import json
import os
import re

import torch

from ..model_file.config import ModelConfig
from ..model_file.dequantize import dequantize
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import FC1, FC2, FFN_GATE, split_name, tensor_name

from .model import PredictorSet

THRESHOLD_KEY = "powerinfer.sparse_threshold"
CONFIG_FILE = "config.json"
LAYER_FILE = re.compile(r"^model_(\d+)\.pt$")
STATE_DICT_KEYS = (f"{FC1}.weight", f"{FC2}.weight")  # a predictor module's torch keys (nn.Linear's)


def import_powerinfer(source: str, config: ModelConfig, fingerprint: Fingerprint | None = None
                      ) -> tuple[PredictorSet, str]:
    """Predictors from a PowerInfer directory or GGUF, checked against the model (`config`; with `fingerprint`,
    a GGUF that is itself a model must be the same model). Returns them and the source kind for the file's
    `source` key: "powerinfer-directory" or "powerinfer-gguf"."""
    if os.path.isdir(source):
        return import_directory(source, config), "powerinfer-directory"
    if not os.path.exists(source):
        raise HybridInferError(f"{source} not found; give a PowerInfer predictor directory or PowerInfer GGUF")
    return import_gguf(source, config, fingerprint), "powerinfer-gguf"


def import_directory(path: str, config: ModelConfig) -> PredictorSet:
    numbered = {}
    for name in os.listdir(path):
        match = LAYER_FILE.match(name)
        if match:
            numbered[int(match.group(1))] = os.path.join(path, name)
    if not numbered:
        raise HybridInferError(f"{path} has no model_<layer>.pt files; it is not a PowerInfer predictor directory")
    layers = sorted(numbered)
    _check_layers(path, layers, config)
    fc1, fc2 = [], []
    for i in layers:
        state = _load_state_dict(numbered[i])
        fc1.append(_weight(state, STATE_DICT_KEYS[0], numbered[i]))
        fc2.append(_weight(state, STATE_DICT_KEYS[1], numbered[i]))
    _check_shapes(path, fc1, fc2, config)
    threshold = _directory_threshold(path)
    return PredictorSet(fc1, fc2, [threshold] * len(fc1))


def import_gguf(path: str, config: ModelConfig, fingerprint: Fingerprint | None = None) -> PredictorSet:
    file = GGUFFile(path)
    found: dict[int, dict[str, str]] = {}
    for name in file.tensors:
        part, layer = split_name(name)
        if part in (FC1, FC2) and layer is not None and name == tensor_name(part, layer):
            found.setdefault(layer, {})[part] = name
    if not found:
        raise HybridInferError(f"{path} has no {tensor_name(FC1, 'N')} / {tensor_name(FC2, 'N')} tensors; "
                               "it holds no PowerInfer predictors")
    layers = sorted(found)
    for i in layers:
        if set(found[i]) != {FC1, FC2}:
            raise HybridInferError(f"{path}: layer {i} has only {''.join(found[i])}; the file is incomplete")
    _check_layers(path, layers, config)
    if fingerprint is not None and tensor_name(FFN_GATE, 0) in file.tensors:
        try:
            file_config = ModelConfig.from_gguf(file)
        except HybridInferError:
            file_config = None  # an architecture hybridinfer does not run: the shape checks below still apply
        if file_config is not None:
            Fingerprint.of_model(file, file_config).check_matches(
                fingerprint, path, "a PowerInfer model whose predictors were made")
    fc1 = [torch.from_numpy(dequantize(file.tensor(found[i][FC1]))) for i in layers]
    fc2 = [torch.from_numpy(dequantize(file.tensor(found[i][FC2]))) for i in layers]
    _check_shapes(path, fc1, fc2, config)
    threshold = float(file.get(THRESHOLD_KEY, 0.0))
    return PredictorSet(fc1, fc2, [threshold] * len(fc1))


def _check_layers(path: str, layers: list[int], config: ModelConfig) -> None:
    missing = sorted(set(range(config.n_layer)) - set(layers))
    extra = [i for i in layers if i >= config.n_layer]
    if extra:
        raise HybridInferError(f"{path} has predictors for {max(layers) + 1} layers, but the model has "
                               f"{config.n_layer}; these predictors are for another model")
    if missing:
        raise HybridInferError(f"{path} lacks the predictor of layer {missing[0]} ({len(missing)} of "
                               f"{config.n_layer} layers missing); the predictors are incomplete or for another model")


def _check_shapes(path: str, fc1: list[torch.Tensor], fc2: list[torch.Tensor], config: ModelConfig) -> None:
    for i, (a, b) in enumerate(zip(fc1, fc2)):
        if a.ndim != 2 or a.shape[1] != config.n_embd:
            raise HybridInferError(f"{path}: layer {i} {STATE_DICT_KEYS[0]} has shape {tuple(a.shape)}, expected (D, "
                                   f"{config.n_embd}) for this model's n_embd; the predictors are for another model")
        if b.ndim != 2 or b.shape != (config.n_ff, a.shape[0]):
            raise HybridInferError(f"{path}: layer {i} {STATE_DICT_KEYS[1]} has shape {tuple(b.shape)}, expected "
                                   f"({config.n_ff}, {a.shape[0]}) for this model's n_ff and fc1's D; the predictors "
                                   "are for another model")


def _load_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign pickle
        raise HybridInferError(f"cannot read {path} as a torch state dict ({type(exc).__name__}); "
                               "re-download the predictors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HybridInferError(f"{path} holds a {type(state).__name__}, not a state dict with "
                               f"{' and '.join(STATE_DICT_KEYS)}")
    return state


def _weight(state: dict, name: str, path: str) -> torch.Tensor:
    for key, value in state.items():
        if (key == name or key.endswith("." + name)) and isinstance(value, torch.Tensor):
            return value.float()
    raise HybridInferError(f"{path} has no {name} (keys: {', '.join(map(str, list(state)[:6]))}); "
                           "it is not a PowerInfer predictor")


def _directory_threshold(path: str) -> float:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        return 0.0
    try:
        with open(config_path, encoding="utf-8") as handle:
            value = json.load(handle).get("sparse_threshold", 0.0)
        return float(0.0 if value is None else value)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise HybridInferError(f"{config_path} is not a JSON object with a numeric sparse_threshold ({exc})") from None
