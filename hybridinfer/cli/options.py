"""Flags shared by several commands, named as llama.cpp names them."""

from __future__ import annotations

import dataclasses

import click

from ..default_model import ensure_default_model
from ..engine import Engine
from ..options import RunOptions
from ..generation.sampling import SamplerSettings
from ..sparsity.thresholds import METHODS

_defaults = SamplerSettings()


def model_options(command):
    for option in reversed([
        click.option("-m", "--model", "model_path", type=click.Path(),
                     help="GGUF model file (default: SmolLM2-135M-Instruct, fetched on first use)"),
        click.option("-c", "--ctx-size", "n_ctx", type=int, default=None,
                     help="context size in tokens (default: the model's, at most 4096; 0 = the model's own)"),
        click.option("-t", "--threads", "n_threads", type=int, default=None, help="CPU threads (default: all cores)"),
        click.option("--exact", is_flag=True, help="lossless sparse FFN: up/down rows only where the activation passes"),
        click.option("--predictors", "predictors", type=click.Path(dir_okay=False), default=None,
                     help="predictor file (.pred.gguf): compute only the neurons it predicts active"),
        click.option("--sparsity-file", "sparsity_file", type=click.Path(dir_okay=False), default=None,
                     help="SiLU models: a sparsity file from `hybridinfer sparsify`: CATS (up/down rows only for "
                          "neurons whose |SiLU(gate)| passes) or TEAL (weight columns only for projection inputs "
                          "that pass)"),
        click.option("--sparsity", "sparsity", type=float, default=None,
                     help="SiLU models: the sparsity file `hybridinfer sparsify --sparsity S` wrote beside the model "
                          "(MODEL.cats-S.sparsity.gguf, S in percent; see --sparsity-method)"),
        click.option("--sparsity-method", "sparsity_method", type=click.Choice(METHODS), default=None,
                     help="the method of the --sparsity file beside the model (default: cats)"),
        click.option("--vram-budget", default=None,
                     help="hybrid: GPU memory budget (like 6GiB); hot neurons solved from the activations file"),
        click.option("--split", "split", type=click.Path(dir_okay=False), default=None,
                     help="hybrid: a split file from `hybridinfer split`"),
        click.option("--activations", "activations", type=click.Path(dir_okay=False), default=None,
                     help="activations file for --vram-budget (default: MODEL.act.gguf beside the model)"),
        click.option("-ngl", "--n-gpu-layers", "n_gpu_layers", type=int, default=None,
                     help="hybrid, as llama.cpp: the last N layers whole on the GPU (N > layers: the output too)"),
        click.option("--device", default=None, help="hybrid: GPU side device (default: cuda if present, else cpu)"),
        click.option("--gpu-kernels", type=click.Choice(["triton", "torch"]), default=None,
                     help="hybrid: GPU side kernels (default: triton on cuda, the torch twins on the cpu device)"),
        click.option("--warmup/--no-warmup", default=True, show_default=True,
                     help="run one token at load, so that kernel compilation happens before the prompt"),
        click.option("-ctk", "--cache-type-k", "type_k", default=None,
                     help="the CPU KV cache's type for keys: f32, f16 or q8_0 (default: f16)"),
        click.option("-ctv", "--cache-type-v", "type_v", default=None,
                     help="the CPU KV cache's type for values: f32, f16 or q8_0 (default: f16)"),
        click.option("--backend", type=click.Choice(["packed", "reference"]), default=None,
                     help="packed: numba kernels over the file's own weight formats (default, and what the hybrid "
                          "runtime runs on); reference: torch float32 on the CPU, the oracle"),
    ]):
        command = option(command)
    return command


def sampling_flags(defaults: SamplerSettings, of_what: str = ""):
    """llama.cpp's sampling flags with these defaults; `of_what` says whose values they are (serve: the values a
    request's absent fields take)."""
    def decorate(command):
        d = defaults
        for option in reversed([
            click.option("--temp", "temperature", type=float, default=d.temperature, show_default=True,
                         help=f"temperature{of_what}; <= 0 is greedy"),
            click.option("--top-k", type=int, default=d.top_k, show_default=True, help=f"top-k{of_what} (0 = off)"),
            click.option("--top-p", type=float, default=d.top_p, show_default=True,
                         help=f"top-p{of_what} (1.0 = off)"),
            click.option("--min-p", type=float, default=d.min_p, show_default=True,
                         help=f"min-p{of_what} (0.0 = off)"),
            click.option("--repeat-penalty", type=float, default=d.repeat_penalty, show_default=True,
                         help=f"penalty for repeated tokens{of_what} (1.0 = off)"),
            click.option("--repeat-last-n", type=int, default=d.repeat_last_n, show_default=True,
                         help=f"tokens considered for the repeat penalty{of_what} (0 = off, -1 = context)"),
            click.option("-s", "--seed", type=int, default=-1, show_default=True,
                         help=f"RNG seed{of_what} (-1 = random)"),
        ]):
            command = option(command)
        return command
    return decorate


sampling_options = sampling_flags(_defaults)


def sampling_settings(kwargs: dict) -> dict:
    """Pop the sampling flags out of a command's keyword arguments."""
    names = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed")
    return {name: kwargs.pop(name) for name in names}


RUNTIME_FLAGS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name != "float_activations")  # model_options'


def runtime_settings(kwargs: dict) -> tuple[str | None, RunOptions]:
    """Pop the model path and the runtime flags (`model_options`) out of a command's keyword arguments."""
    return kwargs.pop("model_path"), RunOptions(**{name: kwargs.pop(name) for name in RUNTIME_FLAGS})


def open_engine(model_path: str | None, options: RunOptions) -> Engine:
    """The engine for `model_path` (default: the default model, fetched on first use)."""
    if model_path is None:
        model_path = str(ensure_default_model(progress=lambda message: click.echo(message, err=True)))
    return Engine(model_path, options)
