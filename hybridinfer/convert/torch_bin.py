"""PyTorch `.bin` checkpoints, opened with `torch.load(weights_only=True)`: no code from the file is run, and
(zip files) tensors are memory-mapped and read lazily. A pickle the safe unpickler refuses (it needs classes
other than tensors and plain containers) and a corrupt or truncated file are each one line that says what to do."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..errors import HybridInferError
from .source_tensor import SourceTensor

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format; older (legacy) pickles cannot be memory-mapped


def torch_bin_tensors(path: Path) -> list[SourceTensor]:
    state = _load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise HybridInferError(f"{path} holds a {type(state).__name__}, not a dict of tensors; "
                               "give a model checkpoint (a state dict)")
    tensors = []
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            continue
        if value.dtype not in DTYPES:
            raise HybridInferError(f"{path}: tensor {name} has dtype {value.dtype}; only float tensors are supported")
        tensors.append(SourceTensor(name, tuple(value.shape), DTYPES[value.dtype], value.numel() * value.element_size(),
                                    lambda value=value: value.to(torch.float32).numpy()))
    return tensors


def _load(path: Path):
    with warnings.catch_warnings():  # torch warns (on stderr) about pickle protocols it does not expect
        warnings.simplefilter("ignore")
        try:
            with open(path, "rb") as handle:
                zipped = handle.read(4) == _ZIP_MAGIC
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except pickle.UnpicklingError as exc:
            if str(exc).startswith("Weights only load failed"):
                raise _unsafe_pickle(path, str(exc)) from None
            raise _corrupt(path, exc) from None
        except OSError as exc:
            raise HybridInferError(f"cannot read {path}: {exc.strerror}") from None
        except Exception as exc:  # torch reports damaged files as RuntimeError, EOFError, KeyError, ...
            raise _corrupt(path, exc) from None


def _unsafe_pickle(path: Path, message: str) -> HybridInferError:
    needed = re.search(r"GLOBAL ([\w.]+)", message)
    what = needed.group(1) if needed else "pickle features beyond tensors and plain containers"
    return HybridInferError(
        f"{path} is a pickle that cannot be loaded safely (it needs {what}, and unpickling could run code); "
        "if you trust its source, convert the checkpoint to safetensors (e.g. transformers' "
        "save_pretrained(..., safe_serialization=True)) and convert that")


def _corrupt(path: Path, exc: Exception) -> HybridInferError:
    return HybridInferError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated: "
                            f"{type(exc).__name__}); download it again")
