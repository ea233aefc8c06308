"""The predictor file: a GGUF holding one predictor per layer, made for one model.

    general.architecture                        "hybridinfer-predictor"
    hybridinfer.predictor.format_version        u32  1
    hybridinfer.predictor.block_count           u32  layers (= the model's)
    hybridinfer.predictor.embedding_length      u32  n_embd (= the model's)
    hybridinfer.predictor.feed_forward_length   u32  n_ff (= the model's)
    hybridinfer.predictor.ranks                 u32[block_count]  hidden width D of each layer's predictor
    hybridinfer.predictor.thresholds            f32[block_count]  neuron active iff logit >= threshold
    hybridinfer.predictor.source                str  "trained", "powerinfer-directory" or "powerinfer-gguf"
    hybridinfer.predictor.source_path           str  (imports) the PowerInfer directory or GGUF read
    hybridinfer.fingerprint.shape / .probe      the model's fingerprint (hybridinfer/fingerprint.py)
  optional, written by `hybridinfer predictors train` (metrics on held-out test tokens, see metrics.py):
    hybridinfer.predictor.metrics.recall              f32[block_count]
    hybridinfer.predictor.metrics.predicted_sparsity  f32[block_count]
    hybridinfer.predictor.metrics.true_sparsity       f32[block_count]
    hybridinfer.predictor.metrics.prior_recall        f32[block_count]  frequency prior at equal sparsity
    hybridinfer.predictor.metrics.tokens              u64  test tokens the metrics were measured on
    hybridinfer.predictor.train.target_recall         f32  recall the thresholds were calibrated for
    hybridinfer.predictor.train.tokens                u64  training tokens
    hybridinfer.predictor.train.validation_tokens     u64  tokens for early stopping and calibration
    hybridinfer.predictor.train.corpus                str  what the tokens were drawn from
    hybridinfer.predictor.train.seconds               f32  training wall time
  tensors, torch order (GGUF lists them fastest dimension first), F32 or F16:
    blk.{i}.fc1.weight   (rank_i, n_embd)
    blk.{i}.fc2.weight   (n_ff, rank_i)

The names and shapes of the tensors are PowerInfer's, so a PowerInfer runtime's predictor tensors and ours
are the same bytes. The file is written to a temporary name beside the destination and renamed when complete.
"""

from __future__ import annotations

import os
from typing import Any

import gguf
from gguf import GGUFValueType
import numpy as np
import torch

from ..model_file.dequantize import dequantize
from ..atomic_file import atomic_output
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint
from ..model_file.gguf_file import GGUFFile
from ..model_file.tensor_shapes import FC1, FC2, tensor_name

from .model import PredictorSet

ARCH = "hybridinfer-predictor"
FORMAT_VERSION = 1
PREFIX = "hybridinfer.predictor."
VERSION_KEY = PREFIX + "format_version"
LAYERS_KEY = PREFIX + "block_count"
EMBD_KEY = PREFIX + "embedding_length"
FF_KEY = PREFIX + "feed_forward_length"
RANKS_KEY = PREFIX + "ranks"
THRESHOLDS_KEY = PREFIX + "thresholds"
SOURCE_KEY = PREFIX + "source"
SOURCE_PATH_KEY = PREFIX + "source_path"
METRIC_KEYS = {name: PREFIX + "metrics." + name
               for name in ("recall", "predicted_sparsity", "true_sparsity", "prior_recall", "tokens")}
TRAIN_KEYS = {name: PREFIX + "train." + name
              for name in ("target_recall", "tokens", "validation_tokens", "corpus", "seconds")}
TENSOR_TYPES = {"f32": np.float32, "f16": np.float16}


def save_predictors(path: str, predictors: PredictorSet, fingerprint: Fingerprint,
                    extra_metadata: dict[str, Any] | None = None, source: str = "trained",
                    outtype: str = "f32") -> None:
    """Write `predictors` for the model with `fingerprint`. `extra_metadata` maps full keys (see the module
    docstring) to str, int, float or lists of numbers. Nothing is left at `path` unless the write completes."""
    if outtype not in TENSOR_TYPES:
        raise HybridInferError(f"predictor tensor type must be one of {', '.join(TENSOR_TYPES)}, got {outtype!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise HybridInferError(f"cannot write {path}: the directory {directory} does not exist")
    try:
        with atomic_output(path) as temporary:
            writer = gguf.GGUFWriter(temporary, ARCH)
            writer.add_uint32(VERSION_KEY, FORMAT_VERSION)
            writer.add_uint32(LAYERS_KEY, predictors.n_layer)
            writer.add_uint32(EMBD_KEY, predictors.n_embd)
            writer.add_uint32(FF_KEY, predictors.n_ff)
            _add_array(writer, RANKS_KEY, [int(r) for r in predictors.ranks], GGUFValueType.UINT32)
            _add_array(writer, THRESHOLDS_KEY, [float(t) for t in predictors.thresholds], GGUFValueType.FLOAT32)
            writer.add_string(SOURCE_KEY, source)
            fingerprint.write(writer)
            for key, value in (extra_metadata or {}).items():
                _add_value(writer, key, value)
            dtype = TENSOR_TYPES[outtype]
            for i in range(predictors.n_layer):
                writer.add_tensor(tensor_name(FC1, i), predictors.fc1[i].cpu().numpy().astype(dtype))
                writer.add_tensor(tensor_name(FC2, i), predictors.fc2[i].cpu().numpy().astype(dtype))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as exc:
        raise HybridInferError(f"cannot write {path}: {exc.strerror or exc}") from None


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (int, np.integer)):
        writer.add_uint64(key, int(value)) if value >= 0 else writer.add_int64(key, int(value))
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    elif isinstance(value, (list, tuple, np.ndarray)):
        values = np.asarray(value)
        if values.dtype.kind in "iub":
            _add_array(writer, key, [int(v) for v in values], GGUFValueType.INT64)
        else:
            _add_array(writer, key, [float(v) for v in values], GGUFValueType.FLOAT32)
    else:
        raise TypeError(f"metadata {key}: cannot store a {type(value).__name__}")


def _add_array(writer: gguf.GGUFWriter, key: str, values: list, sub_type: GGUFValueType) -> None:
    writer.add_key_value(key, values, GGUFValueType.ARRAY, sub_type=sub_type)


def read_predictor_file(path: str, weights: bool = True) -> tuple[PredictorSet, dict[str, Any]]:
    """The predictors and metadata of a predictor file, checked for internal consistency but not against a
    model (`load_predictors` does that). Without `weights`, the set's tensors are shapes only (torch's meta
    device), for a runtime that maps its packed predictors from the repack cache."""
    file = _open(path)
    n_layer, n_embd, n_ff = _dimensions(file)
    ranks = file.numbers(RANKS_KEY, n_layer)
    thresholds = file.numbers(THRESHOLDS_KEY, n_layer)
    if not all(r == int(r) and 1 <= r <= n_ff for r in ranks):
        raise HybridInferError(f"{path} is a corrupt predictor file: its ranks {ranks[:4]}... are not all counts "
                               f"from 1 to {n_ff}; make it again")
    ranks = [int(r) for r in ranks]
    fc1, fc2 = [], []
    for i in range(n_layer):
        fc1.append(_tensor(file, tensor_name(FC1, i), (ranks[i], n_embd), weights))
        fc2.append(_tensor(file, tensor_name(FC2, i), (n_ff, ranks[i]), weights))
    return PredictorSet(fc1, fc2, thresholds), file.metadata


def load_predictors(path: str, model_fingerprint: Fingerprint, weights: bool = True) -> PredictorSet:
    """The predictors in `path`, refused (one-line HybridInferError) unless they were made for this model;
    `weights`: as `read_predictor_file`."""
    file = _open(path)
    n_layer, n_embd, n_ff = _dimensions(file)
    model_layers, model_embd, model_ff = model_fingerprint.dimensions
    if n_layer != model_layers:
        raise HybridInferError(f"{path} holds predictors for {n_layer} layers, but the model has {model_layers}; "
                               "use the predictor file made for this model")
    if (n_embd, n_ff) != (model_embd, model_ff):
        raise HybridInferError(f"{path} holds predictors for n_embd {n_embd}, n_ff {n_ff}, but the model has "
                               f"n_embd {model_embd}, n_ff {model_ff}; use the predictor file made for this model")
    Fingerprint.from_file(file).check_matches(model_fingerprint, path, "a predictor file")
    predictors, _ = read_predictor_file(path, weights)
    return predictors


def _dimensions(file: GGUFFile) -> tuple[int, int, int]:
    return tuple(file.integer(key, 1, 2**31 - 1) for key in (LAYERS_KEY, EMBD_KEY, FF_KEY))


def _open(path: str) -> GGUFFile:
    file = GGUFFile(path)
    arch = file.architecture
    if arch != ARCH:
        hint = (" (a PowerInfer model with predictors inside: run `hybridinfer predictors import` on it)"
                if tensor_name(FC1, 0) in file.tensors else "")
        raise HybridInferError(f"{path} is not a hybridinfer predictor file (its architecture is {arch or 'none'!r})"
                               f"{hint}")
    version = file.integer(VERSION_KEY, 0, 2**31 - 1, default=0)
    if version != FORMAT_VERSION:
        raise HybridInferError(f"{path} is predictor format version {version}; this hybridinfer reads version "
                               f"{FORMAT_VERSION} (make the file again with this version)")
    for key in (LAYERS_KEY, EMBD_KEY, FF_KEY):
        file.require(key)
    return file


def _tensor(file: GGUFFile, name: str, shape: tuple[int, int], weights: bool = True) -> torch.Tensor:
    tensor = file.tensor(name)
    if tensor.shape != shape:
        raise HybridInferError(f"{file.path}: tensor {name} has shape {tensor.shape}, expected {shape}; "
                               "the file is corrupt, make it again")
    return torch.from_numpy(dequantize(tensor)) if weights else torch.empty(shape, device="meta")


def describe_predictor_file(path: str) -> dict[str, Any]:
    """What `hybridinfer predictors info` shows: the file's model, predictors, stored metrics and training."""
    predictors, metadata = read_predictor_file(path)
    file = GGUFFile(path)
    fingerprint = Fingerprint.from_file(file)
    layers = [{"layer": i, "rank": predictors.rank(i), "threshold": predictors.thresholds[i]}
              for i in range(predictors.n_layer)]
    for name in ("recall", "predicted_sparsity", "true_sparsity", "prior_recall"):
        values = file.numbers(METRIC_KEYS[name]) if METRIC_KEYS[name] in metadata else None
        if values is not None and len(values) == predictors.n_layer:
            for layer, value in zip(layers, values):
                layer[name] = float(value)
    average = {"rank": float(np.mean(predictors.ranks))}
    for name in ("recall", "predicted_sparsity", "true_sparsity", "prior_recall"):
        if name in layers[0]:
            average[name] = float(np.mean([layer[name] for layer in layers]))
    summary: dict[str, Any] = {
        "path": path,
        "source": file.text(SOURCE_KEY, default=""),
        "model_shape": fingerprint.shape,
        "n_layer": predictors.n_layer,
        "n_embd": predictors.n_embd,
        "n_ff": predictors.n_ff,
        "parameters": predictors.n_params,
        "tensor_type": file.tensor(tensor_name(FC1, 0)).type.name,
        "bytes": sum(t.n_bytes for t in file.tensors.values()),
    }
    if SOURCE_PATH_KEY in metadata:
        summary["source_path"] = file.text(SOURCE_PATH_KEY)
    for name, key in list(TRAIN_KEYS.items()) + [("test_tokens", METRIC_KEYS["tokens"])]:
        if key in metadata and isinstance(metadata[key], (str, int, float)):
            value = metadata[key]
            summary[name] = value if isinstance(value, str) else float(f"{value:.6g}") if isinstance(value, float) \
                else int(value)
    summary["layers"] = layers
    summary["average"] = average
    return summary
