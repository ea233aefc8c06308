"""`hybridinfer profile`: count how often each FFN neuron fires over calibration text."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from ..text.calibration import calibration_texts, token_chunks
from ..runtime.activations import profile_activations
from ..hybrid.activations_file import export_powerinfer, plot_profile, save_profile
from ..options import RunOptions
from .options import open_engine


@click.command()
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False), help="GGUF model (default: SmolLM2)")
@click.option("--corpus", "corpus_files", multiple=True, type=click.Path(dir_okay=False),
              help="text files to profile on (default: the built-in Python-docstring corpus)")
@click.option("--tokens", "n_tokens", type=int, default=32768, show_default=True, help="tokens to run")
@click.option("--chunk", "chunk_len", type=int, default=256, show_default=True, help="tokens per forward pass")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="activations file to write")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="PNG of the frequency curves")
@click.option("--powerinfer-dir", type=click.Path(file_okay=False), default=None,
              help="also write PowerInfer's activation/activation_{i}.pt files under this directory")
@click.option("-t", "--threads", "n_threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def profile(model_path, corpus_files, n_tokens, chunk_len, output, plot_path, powerinfer_dir, n_threads, as_json):
    """Per-neuron activation frequencies of a model (the input to `hybridinfer split`)."""
    engine = open_engine(model_path, RunOptions(n_ctx=max(chunk_len, 2), n_threads=n_threads))
    chunks = token_chunks(engine.tokenizer, calibration_texts(list(corpus_files)), n_tokens, chunk_len)
    with tqdm(total=sum(map(len, chunks)), unit="tok", desc="profiling", disable=as_json) as bar:
        result = profile_activations(engine, chunks, on_chunk=bar.update)
    save_profile(result, output)
    if plot_path:
        plot_profile(result, plot_path)
    if powerinfer_dir:
        export_powerinfer(result, powerinfer_dir)
    summary = result.summary()
    if as_json:
        click.echo(json.dumps({"output": output, **summary}))
        return
    click.echo(f"{'layer':>5} {'sparsity':>9} {'top-20% coverage':>17}")
    for row in summary["layers"]:
        click.echo(f"{row['layer']:5d} {row['sparsity']:9.4f} {row['top20_coverage']:17.4f}")
    click.echo(f"average sparsity {summary['average_sparsity']:.4f}, top-20% coverage "
               f"{summary['average_top20_coverage']:.4f} over {summary['n_tokens']} tokens; wrote {output}")
