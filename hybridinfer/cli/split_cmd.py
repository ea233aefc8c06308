"""`hybridinfer split`: choose the hot neurons for a GPU memory budget."""

from __future__ import annotations

import json

import click

from ..hybrid.setup import default_device, memory_model
from ..hybrid.placement.plan import plot_split, solve_split, split_report
from ..hybrid.placement.sizes import format_size, parse_size
from ..hybrid.placement.split_file import export_powerinfer_gpuidx, save_split
from ..hybrid.activations_file import load_profile
from ..options import RunOptions
from .options import open_engine
from .runtime_options import load_predictor_set


@click.command()
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False), help="GGUF model (default: SmolLM2)")
@click.option("--activations", "activations_path", required=True, type=click.Path(dir_okay=False),
              help="activations file from `hybridinfer profile`")
@click.option("--vram-budget", required=True, help="GPU memory budget, like 6GiB or 512MiB")
@click.option("-c", "--ctx-size", "n_ctx", type=int, default=4096, show_default=True,
              help="context size the KV cache is sized for")
@click.option("--predictors", "predictors_path", type=click.Path(dir_okay=False), default=None,
              help="predictor file that will be used (its weights live on the GPU too)")
@click.option("--device", default=None, help="GPU side device the split is for (default: cuda if present, else cpu)")
@click.option("--group", type=int, default=256, show_default=True, help="neurons per placement group")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="split file to write")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="PNG of the placement")
@click.option("--powerinfer-gpuidx", type=click.Path(dir_okay=False), default=None,
              help="also write PowerInfer's .generated.gpuidx file")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def split(model_path, activations_path, vram_budget, n_ctx, predictors_path, device, group, output, plot_path,
          powerinfer_gpuidx, as_json):
    """Place the most active FFN neurons on the GPU within --vram-budget."""
    budget = parse_size(vram_budget)
    engine = open_engine(model_path, RunOptions(n_ctx=2))
    profile = load_profile(activations_path, engine.fingerprint)
    memory = memory_model(engine.file, engine.config, n_ctx, device or default_device(),
                          load_predictor_set(predictors_path, engine))
    the_split = solve_split(engine.config, profile, memory, budget, group)
    save_split(the_split, output)
    report = split_report(the_split, memory, profile, engine.config)
    if plot_path:
        plot_split(report, plot_path)
    if powerinfer_gpuidx:
        export_powerinfer_gpuidx(the_split, powerinfer_gpuidx)
    if as_json:
        click.echo(json.dumps({"output": output, **report}))
        return
    click.echo(f"GPU memory model (the file's formats, {memory.kv_element_bytes}-byte KV cache, context {n_ctx}):")
    click.echo(f"  per layer   {format_size(memory.layer[0]):>12s}   attention, norms, KV cache"
               f"{', predictor' if predictors_path else ''}")
    click.echo(f"  output      {format_size(memory.output):>12s}")
    click.echo(f"  workspace   {format_size(memory.workspace):>12s}   one neuron: {memory.neuron[0]} B")
    if report["all_on_cpu"]:
        click.echo(f"the budget {format_size(budget)} holds no layer's attention: everything runs on the CPU")
    else:
        click.echo(f"attention of layers {the_split.gpu_layers[0]}-{the_split.gpu_layers[-1]} on the GPU; output "
                   f"projection {'on the GPU' if the_split.output_on_gpu else 'on the CPU'}")
    click.echo(f"{'layer':>5} {'attention':>9} {'hot':>7} {'hot share':>9} {'GPU activations':>15}")
    for row in report["layers"]:
        where = "GPU" if row["attention_on_gpu"] else "CPU"
        click.echo(f"{row['layer']:5d} {where:>9} {row['hot_neurons']:7d} {row['hot_share']:9.3f} "
                   f"{row['gpu_activation_share']:15.3f}")
    click.echo(f"GPU: {format_size(report['gpu_bytes'])} of {format_size(budget)}; CPU FFN: "
               f"{format_size(report['cpu_ffn_bytes'])}; expected share of FFN activations on the GPU: "
               f"{100 * report['gpu_share']:.1f}%; wrote {output}")
