"""List and read the tensors of a Hugging Face checkpoint one at a time, with bounded memory.

Safetensors files are read with plain positioned reads (the header is parsed here; it is 8 bytes of length
and a JSON table of offsets), so only the tensor being converted is in memory; a memory map would leave every
touched page of a multi-GB shard resident. PyTorch `.bin` files are opened with `torch.load(weights_only=True,
mmap=True)`: no code from the file is run, and tensors are read lazily.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..dequantize import bf16_to_f32
from ..errors import HybridInferError

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
_TORCH_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "F32", "F16", "BF16", "F64"
    n_bytes: int
    load: Callable[[], np.ndarray]  # returns the values as a float32 array of `shape`


def list_tensors(hf_dir: Path) -> dict[str, SourceTensor]:
    """Every tensor of the checkpoint by HF name, from model.safetensors / sharded safetensors + index /
    pytorch_model.bin / sharded .bin + index (safetensors preferred when both exist)."""
    files = _weight_files(hf_dir)
    tensors: dict[str, SourceTensor] = {}
    for path in files:
        found = _safetensors_tensors(path) if path.suffix == ".safetensors" else _torch_bin_tensors(path)
        for tensor in found:
            tensors[tensor.name] = tensor
    return tensors


def _weight_files(hf_dir: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = hf_dir / index_name
        if index.exists():
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map", {})
            files = sorted({hf_dir / name for name in weight_map.values()})
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise HybridInferError(f"{index} names {missing[0]}, which is missing; the download is incomplete")
            return files
        if (hf_dir / single).exists():
            return [hf_dir / single]
    raise HybridInferError(f"{hf_dir} has no weights (model.safetensors, pytorch_model.bin or a sharded index)")


def _safetensors_tensors(path: Path) -> list[SourceTensor]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise HybridInferError(f"{path} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise HybridInferError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HybridInferError(f"{path} is not a safetensors file (bad header)") from None
    base = 8 + header_len
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise HybridInferError(f"{path}: tensor {name} has dtype {dtype}; only F32, F16, BF16, F64 are supported")
        begin, end = info["data_offsets"]
        if base + end > size:
            raise HybridInferError(f"{path} is truncated: tensor {name} ends past the end of the file")
        shape = tuple(int(d) for d in info["shape"])
        tensors.append(SourceTensor(name, shape, dtype, end - begin, _safetensors_loader(path, base + begin, end - begin, dtype, shape)))
    return tensors


def _safetensors_loader(path: Path, offset: int, n_bytes: int, dtype: str, shape: tuple[int, ...]):
    def load() -> np.ndarray:
        raw = np.empty(n_bytes, dtype=np.uint8)
        with open(path, "rb", buffering=0) as handle:
            view, done = memoryview(raw), 0
            while done < n_bytes:
                got = os.preadv(handle.fileno(), [view[done:]], offset + done)
                if got == 0:
                    raise HybridInferError(f"{path} is truncated")
                done += got
        values = raw.view(_SAFETENSORS_DTYPES[dtype])
        if dtype == "BF16":
            return bf16_to_f32(values).reshape(shape)
        return values.astype(np.float32, copy=False).reshape(shape)
    return load


def _torch_bin_tensors(path: Path) -> list[SourceTensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler refuses anything but tensors and plain containers
        raise HybridInferError(f"cannot read {path} safely as weights ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.dtype not in _TORCH_DTYPES:
            raise HybridInferError(f"{path}: tensor {name} has dtype {value.dtype}; only float tensors are supported")
        dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}[value.dtype]
        tensors.append(SourceTensor(name, tuple(value.shape), dtype, value.numel() * value.element_size(),
                                    lambda value=value: value.to(torch.float32).numpy()))
    return tensors
