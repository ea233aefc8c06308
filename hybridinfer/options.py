"""`RunOptions`: how a model runs. The one set of settings that the Python API (`hybridinfer.load(path,
**options)`, `Engine(path, options)`) and the command line's flags (`cli/options.py`, llama.cpp's names) share.
Also the type checks of the Python API's arguments (`ArgumentTypeError`, naming the argument) and the bound on
CPU threads."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .errors import ArgumentTypeError, HybridInferError

MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS: more -t than this (and than the cores) is a mistake
PATH_FIELDS = ("predictors", "sparsity_file", "split", "activations")
BACKENDS = ("packed", "reference")  # numba kernels over the file's own formats; plain torch float32 (the oracle)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    n_ctx: int | None = None  # context size in tokens; None: the model's, at most 4096; 0: the model's own (-c)
    n_threads: int | None = None  # CPU threads (-t); None: all cores; more than the cores: the cores
    exact: bool = False  # lossless sparse FFN: up/down rows only where the activation passes (--exact)
    predictors: str | None = None  # a predictor file: compute only the neurons it predicts active (--predictors)
    sparsity_file: str | None = None  # SiLU models: CATS/TEAL thresholds from `hybridinfer sparsify` (--sparsity-file)
    sparsity: float | None = None  # SiLU models: the sparsity file for this target beside the model (--sparsity)
    sparsity_method: str | None = None  # the method of that file beside the model: "cats" (default) or "teal"
    split: str | None = None  # hybrid: a split file from `hybridinfer split` (--split)
    vram_budget: str | None = None  # hybrid: a GPU memory budget like "6GiB", solved from `activations`
    activations: str | None = None  # hybrid: the activations file for vram_budget (default: MODEL.act.gguf)
    n_gpu_layers: int | None = None  # hybrid, as llama.cpp's -ngl: the last N layers whole on the GPU side
    device: str | None = None  # hybrid: the GPU side's device (default: cuda if present, else cpu)
    gpu_kernels: str | None = None  # hybrid: "triton" or "torch" (default: triton on cuda, torch twins on cpu)
    backend: str | None = None  # "packed" (default: numba kernels over the file's formats) or "reference"
    type_k: str | None = None  # the CPU KV cache's keys: "f32", "f16" (default, as llama.cpp) or "q8_0" (-ctk)
    type_v: str | None = None  # its values, as type_k (-ctv); the reference backend's cache is float32
    float_activations: bool = False  # packed: keep activations float32 instead of llama.cpp's int8 blocks
    warmup: bool = False  # run one token and a two-token batch at load, as llama.cpp does (the CLI's default):
    #                       kernels compile (or load from their cache) then, not inside the first prompt

    def __post_init__(self) -> None:
        """Each field checked against its type (numpy numbers and path objects become plain ones)."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "bool":
                value = flag(value, field.name)
            elif value is None:
                continue
            elif field.name in PATH_FIELDS:
                value = path_argument(value, field.name, optional=True)
            else:
                check = {"int | None": integer, "float | None": number, "str | None": text}[field.type]
                value = check(value, field.name, optional=True)
            object.__setattr__(self, field.name, value)

    @classmethod
    def of(cls, options: "RunOptions | None" = None, **fields) -> "RunOptions":
        """`options` (default: all defaults) with `fields` replaced; an unknown field is a TypeError."""
        known_fields(cls, fields, "option")
        if options is not None and not isinstance(options, RunOptions):
            raise _wrong_type("options", options, "a RunOptions or None")
        return dataclasses.replace(options or cls(), **fields)

    @property
    def hybrid(self) -> bool:
        """Whether any part runs on the GPU side."""
        return self.split is not None or self.vram_budget is not None or bool(self.n_gpu_layers)

    def check(self) -> None:
        """Refuse values and combinations that no model runs (the checks of the options alone; what depends on
        the model, the engine checks)."""
        from .runtime.kv_types import kv_type
        from .sparsity.thresholds import METHODS, check_target
        if self.n_ctx is not None and self.n_ctx < 0:
            raise HybridInferError(f"-c/--ctx-size must be 0 (the model's own) or positive, got {self.n_ctx}")
        if self.exact and self.predictors:
            raise HybridInferError("--exact and --predictors exclude each other: choose one")
        if self.sparsity is None and self.sparsity_method is not None:
            raise HybridInferError("--sparsity-method names the method of the --sparsity S file: give --sparsity")
        if self.sparsity is not None:
            if self.sparsity_file:
                raise HybridInferError("--sparsity and --sparsity-file exclude each other: give one")
            check_target(self.sparsity)
            method = self.sparsity_method or "cats"
            if method not in METHODS:
                raise HybridInferError(f"unknown sparsity method {method!r}; choose one of {', '.join(METHODS)}")
        if (self.sparsity is not None or self.sparsity_file) and (self.exact or self.predictors or self.hybrid):
            raise HybridInferError("--sparsity-file/--sparsity (CATS/TEAL, SiLU models) runs on the CPU alone: drop "
                                   "--exact, --predictors and the hybrid options (--vram-budget/--split/-ngl)")
        backend = self.backend or "packed"
        if backend not in BACKENDS:
            raise HybridInferError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        kv_type(self.type_k, "-ctk/--cache-type-k")
        kv_type(self.type_v, "-ctv/--cache-type-v")
        if backend == "reference" and {self.type_k, self.type_v} - {None, "f32"}:
            raise HybridInferError("the reference backend (the oracle) keeps its KV cache float32: drop -ctk/-ctv or "
                                   "give f32")
        if self.hybrid and backend != "packed":
            raise HybridInferError("the hybrid runtime (--vram-budget/--split/-ngl) runs on the packed backend; "
                                   "drop --backend reference (the oracle runs on the CPU only)")
        chosen = [name for name, value in (("--split", self.split), ("--vram-budget", self.vram_budget),
                                            ("-ngl", self.n_gpu_layers)) if value is not None]
        if len(chosen) > 1 and chosen != ["--split", "--vram-budget"]:
            raise HybridInferError(f"{' and '.join(chosen)} exclude each other: -ngl offloads whole dense layers, "
                                   "--vram-budget/--split place hot neurons; choose one")


def thread_count(requested: int) -> int:
    """The threads to run for -t/--threads `requested`: at most the cores this process may use (a warning says
    so); past MAX_THREADS (or the cores, if more) a one-line error, as no machine runs that many usefully."""
    cores = available_cores()
    if requested < 1:
        raise HybridInferError(f"-t/--threads must be at least 1, got {requested}")
    if requested > max(MAX_THREADS, cores):
        raise HybridInferError(f"-t/--threads {requested} is more than hybridinfer runs ({max(MAX_THREADS, cores)} at "
                               f"most) and than the {cores} CPU cores this machine gives this process: give -t {cores} "
                               "or less (or leave -t out to use them all)")
    if requested > cores:
        log.warning("-t/--threads %d is more than the %d CPU cores available to this process; using %d",
                    requested, cores, cores)
        return cores
    return requested


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# The Python API's argument checks: each returns the plain value or raises ArgumentTypeError naming `name`.

def known_fields(cls, fields: dict, what: str) -> None:
    """Refuse a keyword that is not a field of dataclass `cls` (`what`: "option", "sampling option")."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ArgumentTypeError(f"unknown {what} {unknown[0]!r}; the {what}s are {', '.join(sorted(known))}")


def integer(value: Any, name: str, optional: bool = False) -> int | None:
    """An int (a numpy integer too; not a bool)."""
    if optional and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _wrong_type(name, value, "an integer" + (" or None" if optional else ""))
    return int(value)


def number(value: Any, name: str, optional: bool = False) -> float | None:
    """A float or an int (numpy's too; not a bool)."""
    if optional and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _wrong_type(name, value, "a number" + (" or None" if optional else ""))
    return float(value)


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _wrong_type(name, value, "True or False")
    return bool(value)


def text(value: Any, name: str, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a string" + (" or None" if optional else ""))
    return value


def path_argument(value: Any, name: str, optional: bool = False) -> str | None:
    """A file path: a str or an os.PathLike (pathlib.Path), as a str."""
    if optional and value is None:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise _wrong_type(name, value, "a path (str or pathlib.Path)" + (" or None" if optional else ""))
    return path


def token_ids(value: Any, name: str, expected: str = "a list of token ids (ints)") -> list[int]:
    """A sequence of token ids (ints, numpy integers, a 1-D integer array) as a list of ints."""
    if isinstance(value, (str, bytes, dict, set)) or not isinstance(value, Iterable):
        raise _wrong_type(name, value, expected)
    ids = list(value)
    for item in ids:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ArgumentTypeError(f"{name} must be {expected}; it holds {item!r:.40} ({type(item).__name__})")
    return [int(item) for item in ids]


def _wrong_type(name: str, value: Any, expected: str) -> ArgumentTypeError:
    return ArgumentTypeError(f"{name} must be {expected}, got {value!r:.60} ({type(value).__name__})")
