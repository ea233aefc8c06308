"""`hybridinfer warmup`: compile (or find cached) the CPU kernels a run with these options needs, and pack (or find
in the repack cache) its weights, without generating: an install step, so that the first real run starts at once."""

from __future__ import annotations

import dataclasses

import click

from ..kernels import compile_time
from .options import model_options, open_engine, runtime_settings


@click.command()
@model_options
def warmup(**kwargs):
    """Compile the kernels and pack the weights a run with these options needs, then exit."""
    model_path, options = runtime_settings(kwargs)
    engine = open_engine(model_path, dataclasses.replace(options, warmup=True))
    compiled = engine.compile_ms / 1000
    what = f"compiled kernels in {compiled:.1f} s" if compiled else "every kernel was already compiled"
    mapped = "mapped from the repack cache" if engine.startup.get("weights_from_cache") else "packed"
    click.echo(f"{engine.path}: {what} (cached in {compile_time.cache_directory()}); weights {mapped}", err=True)
