"""The split file: which neurons of each layer live on the GPU, for one model, budget and context size.

    GGUF, general.architecture = "hybridinfer-split"
    hybridinfer.fingerprint.*               the model's fingerprint
    hybridinfer.split.vram_budget           u64: the budget it was solved for, bytes
    hybridinfer.split.n_ctx                 u32: the context size its KV-cache estimate assumed
    hybridinfer.split.format_version        u32: 2 (version 1 counted float16 weights and had no layer placement)
    hybridinfer.split.kv_element_bytes      u32: bytes per KV cache element it assumed (2 CUDA, 4 the CPU stand-in)
    hybridinfer.split.gpu_layers            u32[]: the layers whose attention (+ KV cache, predictor) is on the GPU
    hybridinfer.split.output_on_gpu         bool: the output projection is on the GPU
    hybridinfer.split.group                 u32: neurons per placement group
    hybridinfer.split.fixed_bytes           u64: GPU bytes besides hot neurons (memory_model.py); 0: all on the CPU
    hybridinfer.split.hot_bytes             u64: GPU bytes of the hot neurons
    hybridinfer.split.gpu_share             f32: expected share of FFN activations served by the GPU
    blk.{i}.gpu_idx                         i32 [n_ff]: 1 where neuron j is on the GPU (only in GPU layers)

PowerInfer's `.generated.gpuidx` layout can be exported too: magic PWRI, arch generic.gpu_index, key
split.vram_capacity, tensors in order blk.0.gpu_idx, blk.0.gpu_bucket (sorted hot indices), blk.1.gpu_idx, ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import gguf
import numpy as np

from ...atomic_file import atomic_output
from ...errors import HybridInferError
from ...model_file.fingerprint import Fingerprint, open_model_artefact
from ...model_file.gguf_file import GGUFFile
from ...model_file.tensor_shapes import GPU_BUCKET, GPU_IDX, block_name

ARCH = "hybridinfer-split"
_KEY = "hybridinfer.split."
FORMAT_VERSION = 2


@dataclass
class Split:
    hot: list[np.ndarray]  # per layer: sorted hot neuron indices
    n_ff: int
    vram_budget: int
    n_ctx: int
    kv_element_bytes: int
    group: int
    fixed_bytes: int
    hot_bytes: int
    gpu_share: float
    fingerprint: Fingerprint
    gpu_layers: list[int]  # ascending
    output_on_gpu: bool

    @property
    def all_on_cpu(self) -> bool:
        return not self.gpu_layers

    def masks(self) -> list[np.ndarray]:
        out = []
        for hot in self.hot:
            mask = np.zeros(self.n_ff, dtype=bool)
            mask[hot] = True
            out.append(mask)
        return out


def save_split(split: Split, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, ARCH)
        split.fingerprint.write(writer)
        writer.add_uint64(_KEY + "vram_budget", split.vram_budget)
        writer.add_uint32(_KEY + "n_ctx", split.n_ctx)
        writer.add_uint32(_KEY + "format_version", FORMAT_VERSION)
        writer.add_uint32(_KEY + "kv_element_bytes", split.kv_element_bytes)
        if split.gpu_layers:  # (gguf cannot write an empty array: absent means none)
            writer.add_array(_KEY + "gpu_layers", [int(i) for i in split.gpu_layers])
        writer.add_bool(_KEY + "output_on_gpu", bool(split.output_on_gpu))
        writer.add_uint32(_KEY + "group", split.group)
        writer.add_uint64(_KEY + "fixed_bytes", split.fixed_bytes)
        writer.add_uint64(_KEY + "hot_bytes", split.hot_bytes)
        writer.add_float32(_KEY + "gpu_share", split.gpu_share)
        for i, mask in enumerate(split.masks()):
            writer.add_tensor(block_name(GPU_IDX, i), mask.astype(np.int32))
        _finish(writer)


def load_split(path: str | os.PathLike, model_fingerprint: Fingerprint) -> Split:
    file, fingerprint = open_model_artefact(path, ARCH, "a split file", "hybridinfer split", model_fingerprint)
    version = file.integer(_KEY + "format_version", 0, 2**31 - 1, default=1)
    if version != FORMAT_VERSION:
        raise HybridInferError(f"{path} is a split file of an older hybridinfer (format {version}, "
                               f"this one reads {FORMAT_VERSION}); re-run `hybridinfer split`")
    n_layer, _, n_ff = fingerprint.dimensions
    masks = [_mask(file, i, n_ff) for i in range(n_layer)]
    count = lambda name: file.integer(_KEY + name, 0, 2**63 - 1)  # noqa: E731
    gpu_layers = file.numbers(_KEY + "gpu_layers", default=[]) if _KEY + "gpu_layers" in file.metadata else []
    if not all(v == int(v) and 0 <= v < n_layer for v in gpu_layers):
        raise HybridInferError(f"{path}: metadata {_KEY}gpu_layers names layers the model does not have; "
                               "re-run `hybridinfer split`")
    share = file.number(_KEY + "gpu_share")
    return Split([np.flatnonzero(m).astype(np.int64) for m in masks], n_ff, count("vram_budget"), count("n_ctx"),
                 count("kv_element_bytes"), count("group"), count("fixed_bytes"), count("hot_bytes"), share,
                 fingerprint, sorted(int(i) for i in gpu_layers), bool(file.metadata.get(_KEY + "output_on_gpu")))


def _mask(file: GGUFFile, layer: int, n_ff: int) -> np.ndarray:
    tensor = file.tensor(block_name(GPU_IDX, layer))
    if tensor.shape != (n_ff,) or tensor.type.name not in ("I8", "I16", "I32", "I64"):
        raise HybridInferError(f"{file.path}: tensor {tensor.name} is {tensor.type.name} {tensor.shape}, expected "
                               f"{n_ff} integer flags; the file is corrupt: re-run `hybridinfer split`")
    return np.asarray(tensor.raw) != 0


def export_powerinfer_gpuidx(split: Split, path: str | os.PathLike) -> None:
    with atomic_output(path) as partial:
        writer = gguf.GGUFWriter(partial, "generic.gpu_index")
        writer.add_uint64("split.vram_capacity", split.vram_budget)
        for i, (mask, hot) in enumerate(zip(split.masks(), split.hot)):
            writer.add_tensor(block_name(GPU_IDX, i), mask.astype(np.int32))
            writer.add_tensor(block_name(GPU_BUCKET, i), hot.astype(np.int32))
        _finish(writer)
        with open(partial, "r+b") as handle:
            handle.write(b"PWRI")


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
