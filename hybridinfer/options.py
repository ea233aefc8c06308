"""`RunOptions`: how a model runs. The one set of settings that the Python API (`hybridinfer.load(path,
**options)`, `Engine(path, options)`) and the command line's flags (`cli/options.py`, llama.cpp's names) share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    n_ctx: int | None = None  # context size in tokens; None: the model's, at most 4096; 0: the model's own (-c)
    n_threads: int | None = None  # CPU threads (-t); None: all cores
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
    float_activations: bool = False  # packed: keep activations float32 instead of llama.cpp's int8 blocks
    warmup: bool = False  # run one token and a two-token batch at load, as llama.cpp does (the CLI's default):
    #                       kernels compile (or load from their cache) then, not inside the first prompt

    @classmethod
    def of(cls, options: "RunOptions | None" = None, **fields) -> "RunOptions":
        """`options` (default: all defaults) with `fields` replaced; an unknown field is a TypeError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"unknown option {unknown[0]!r}; the options are {', '.join(sorted(known))}")
        return dataclasses.replace(options or cls(), **fields)

    @property
    def hybrid(self) -> bool:
        """Whether any part runs on the GPU side."""
        return self.split is not None or self.vram_budget is not None or bool(self.n_gpu_layers)
