"""List and read the tensors of a Hugging Face checkpoint one at a time, with bounded memory.

Weights are model.safetensors, pytorch_model.bin, or shards named by model.safetensors.index.json /
pytorch_model.bin.index.json (safetensors preferred when both exist). Safetensors files are read with
positioned reads (safetensors_file.py), `.bin` files with torch's safe unpickler (torch_bin.py). Every file's
table of tensors is read and checked here, before the converter writes anything; the data is read later,
tensor by tensor.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HybridInferError
from .hf_index import shard_files
from .safetensors_file import safetensors_tensors
from .source_tensor import SourceTensor
from .torch_bin import torch_bin_tensors

__all__ = ["SourceTensor", "list_tensors"]


def list_tensors(hf_dir: Path) -> dict[str, SourceTensor]:
    """Every tensor of the checkpoint by HF name (no data read yet)."""
    tensors: dict[str, SourceTensor] = {}
    for path in _weight_files(hf_dir):
        found = safetensors_tensors(path) if path.suffix == ".safetensors" else torch_bin_tensors(path)
        for tensor in found:
            tensors[tensor.name] = tensor
    return tensors


def _weight_files(hf_dir: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = hf_dir / index_name
        if index.exists():
            return shard_files(index, Path(single).suffix)
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    raise HybridInferError(f"{hf_dir} has no weights (model.safetensors, pytorch_model.bin or a sharded index)")
