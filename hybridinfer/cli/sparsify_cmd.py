"""`hybridinfer sparsify`: calibrate a SiLU or GELU model's per-layer CATS, TEAL or WINA thresholds for a target
sparsity."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from ..atomic_file import check_destination
from ..options import RunOptions
from ..sparsity.calibrate import calibrate_thresholds, measure_sparsity, runs_over_chunks
from ..sparsity.plot import plot_thresholds
from ..reference.sparse_ffn import require_silu_or_gelu
from ..sparsity.thresholds import ALLOCATIONS, METHODS, SITES, check_target, path_beside, save_thresholds
from ..text.calibration import calibration_texts, token_chunks
from .options import open_engine


@click.command()
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False), help="GGUF model (default: SmolLM2)")
@click.option("--corpus", "corpus_files", multiple=True, type=click.Path(dir_okay=False),
              help="text files to calibrate on (default: the built-in corpus's training split)")
@click.option("--tokens", "n_tokens", type=int, default=16384, show_default=True, help="calibration tokens")
@click.option("--chunk", "chunk_len", type=int, default=256, show_default=True, help="tokens per forward pass")
@click.option("--held-out", "held_out_files", multiple=True, type=click.Path(dir_okay=False),
              help="text files to measure the sparsity on (default: the built-in corpus's validation split)")
@click.option("--held-out-tokens", type=int, default=2048, show_default=True,
              help="held-out tokens to measure the sparsity the thresholds reach (0: skip)")
@click.option("--sparsity", "target", type=float, required=True,
              help="share of values to zero at each site (greedy: of projection weights), between 0 and 1 (like 0.4)")
@click.option("--method", type=click.Choice(METHODS), default="cats", show_default=True,
              help="cats: zero |act(gate)| below a per-layer threshold (up/down rows of those neurons skipped); "
                   "teal: zero small entries of every projection's input (those weight columns skipped); "
                   "wina: as teal, entries small by |x_i| times the norm of their weight column; "
                   "chess: as cats, |act_i| times a calibrated per-neuron scale (its mean |up_i|)")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default="uniform", show_default=True,
              help="teal, wina: the target at every site (uniform), or per-site shares chosen greedily by the least "
                   "output error per weight skipped, the model-wide share of weights skipped at the target")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="sparsity file to write (default: MODEL.METHOD-S.sparsity.gguf beside the model, which "
                   "--sparsity S [--sparsity-method teal] finds)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="PNG of the per-layer thresholds and sparsity")
@click.option("-t", "--threads", "n_threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def sparsify(model_path, corpus_files, n_tokens, chunk_len, held_out_files, held_out_tokens, target, method, allocation,
             output, plot_path, n_threads, as_json):
    """Per-layer magnitude thresholds of a SiLU or GELU gated model (SwiGLU, GeGLU) for --sparsity-file (CATS: the
    FFN activation; TEAL, WINA: the inputs of every projection), and the sparsity they reach on held-out text."""
    check_target(target)
    engine = open_engine(model_path, RunOptions(n_ctx=max(chunk_len, 2), n_threads=n_threads))
    output = output or path_beside(engine.path, target, method)
    for path in [output] + ([plot_path] if plot_path else []):
        check_destination(path)
    require_silu_or_gelu(engine.config, "sparsify")
    chunks = token_chunks(engine.tokenizer, calibration_texts(list(corpus_files)), n_tokens, chunk_len)
    held_out = token_chunks(engine.tokenizer, calibration_texts(list(held_out_files), "validation"),
                            held_out_tokens, chunk_len) if held_out_tokens > 0 else []
    runs = runs_over_chunks(method)
    with tqdm(total=runs * sum(map(len, chunks)), unit="tok", desc="calibrating", disable=as_json) as bar:
        result = calibrate_thresholds(engine, chunks, target, method, on_chunk=bar.update, allocation=allocation)
    with tqdm(total=sum(map(len, held_out)), unit="tok", desc="held-out", disable=as_json or not held_out) as bar:
        measured = measure_sparsity(engine, held_out, result, on_chunk=bar.update) if held_out else None
    save_thresholds(result, output)
    if plot_path:
        plot_thresholds(result, plot_path)
    summary = result.summary()
    if measured is not None:
        summary["held_out_tokens"] = sum(map(len, held_out))
        summary["held_out_sparsity"] = float(measured.mean())
        for row, shares in zip(summary["layers"], measured):
            row["held_out_sparsity"] = float(shares[0]) if len(SITES[method]) == 1 else \
                {site: float(v) for site, v in zip(SITES[method], shares)}
    if as_json:
        click.echo(json.dumps({"output": output, **summary}))
        return
    print_table(summary, method, measured is not None)
    flag = "" if method == "cats" else f" --sparsity-method {method}"
    beside = f", or --sparsity {target}{flag}" if output == path_beside(engine.path, target, method) else ""
    held = f", {summary['held_out_sparsity']:.4f} on {summary['held_out_tokens']} held-out tokens" \
        if measured is not None else ""
    click.echo(f"{method}: sparsity {summary['average_sparsity']:.4f} on {summary['n_tokens']} calibration tokens{held} "
               f"(target {target}); wrote {output} (use it with --sparsity-file{beside})")


SITE_LABELS = {"attn_input": "qkv", "attn_output_input": "o", "ffn_input": "gate/up", "ffn_down_input": "down"}


def print_table(summary: dict, method: str, held_out: bool) -> None:
    """Per layer: the threshold, calibration and held-out sparsity (CATS), or per site the threshold and the
    held-out (else calibration) sparsity (TEAL)."""
    if len(SITES[method]) == 1:  # CATS, CHESS
        click.echo(f"{'layer':>5} {'threshold':>11} {'calibration':>12} {'held-out':>9}")
        for row in summary["layers"]:
            share = f"{row['held_out_sparsity']:9.4f}" if held_out else f"{'-':>9}"
            click.echo(f"{row['layer']:5d} {row['threshold']:11.5f} {row['sparsity']:12.4f} {share}")
        return
    sites = SITES[method]
    labels = [SITE_LABELS[s] for s in sites]
    measured = "held_out_sparsity" if held_out else "sparsity"
    width = 9 * len(sites)
    click.echo(f"{'':5} {'thresholds of the inputs of':^{width}} {measured.replace('_', ' '):^{width}}")
    click.echo(f"{'layer':>5} " + "".join(f"{s:>9}" for s in labels) + " " + "".join(f"{s:>9}" for s in labels))
    for row in summary["layers"]:
        click.echo(f"{row['layer']:5d} " + "".join(f"{row['threshold'][s]:9.5f}" for s in sites) + " " +
                   "".join(f"{row[measured][s]:9.4f}" for s in sites))
