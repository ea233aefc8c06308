"""`hybridinfer bench`: llama-bench style prompt (pp) and generation (tg) rates for one runtime setup."""

from __future__ import annotations

import json

import click

from .options import model_options, open_engine, runtime_settings


@click.command()
@model_options
@click.option("-p", "--n-prompt", type=int, default=64, show_default=True, help="prompt tokens (0 = skip pp)")
@click.option("-n", "--n-gen", type=int, default=32, show_default=True, help="generated tokens (0 = skip tg)")
@click.option("-r", "--repetitions", type=int, default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench(n_prompt, n_gen, repetitions, as_json, **kwargs):
    """Measure prompt processing and generation speed (medians of -r runs)."""
    from ..benchmark import run_bench
    runtime = runtime_settings(kwargs)
    if runtime["n_ctx"] is None:
        runtime["n_ctx"] = max(n_prompt, 16 + n_gen) + 8
    engine = open_engine(**runtime)
    results = run_bench(engine, n_prompt, n_gen, repetitions)
    mode = ("hybrid" if engine.hybrid is not None else "predictors" if runtime["predictors_path"]
            else "exact" if runtime["exact"] else "dense")
    name = engine.file.get("general.name") or engine.path
    if as_json:
        click.echo(json.dumps({"model": name, "mode": mode, "results": [r.as_dict() for r in results]}))
        return
    click.echo("| model | mode | test | t/s |")
    click.echo("| --- | --- | --- | ---: |")
    for result in results:
        click.echo(f"| {name} | {mode} | {result.test} | {result.tokens_per_second:.2f} |")
