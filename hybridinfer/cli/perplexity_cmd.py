"""`hybridinfer perplexity`: perplexity of a text file, and the KL cost and sparsity of --exact / --predictors /
--sparsity-file."""

from __future__ import annotations

import dataclasses
import json

import click

from ..eval.perplexity import perplexity as measure_perplexity
from .options import model_options, open_engine, runtime_settings
from ..text.files import MAX_SCORED_TEXT_BYTES, read_text_file


@click.command()
@model_options
@click.option("-f", "--file", "text_file", required=True, type=click.Path(dir_okay=False), help="text to score")
@click.option("--chunks", "max_chunks", type=int, default=None, help="score at most this many chunks")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def perplexity(text_file, max_chunks, as_json, **kwargs):
    """Perplexity over chunks of -c tokens (default 512), llama.cpp's method."""
    text = read_text_file(text_file, "the text file", MAX_SCORED_TEXT_BYTES)
    model_path, options = runtime_settings(kwargs)
    chunk = options.n_ctx or 512
    engine = open_engine(model_path, dataclasses.replace(options, n_ctx=max(chunk, 4)))

    def progress(index, running):
        if not as_json:
            click.echo(f"[{index + 1}]{running:.4f},", nl=False, err=True)

    result = measure_perplexity(engine, text, n_chunk=chunk, max_chunks=max_chunks, on_chunk=progress)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo("", err=True)
    click.echo(f"Final estimate: PPL = {result.perplexity:.4f} +/- {result.perplexity_stderr:.5f} "
               f"({result.scored_tokens} tokens scored in {result.chunks} chunks of {result.n_chunk})")
    if result.kl_to_dense is not None:
        click.echo(f"dense PPL = {result.dense_perplexity:.4f}; mean KL(dense || sparse) = {result.kl_to_dense:.6f} "
                   f"nats; same top token {100 * result.top1_agreement:.2f}%"
                   + (f"; {engine.sparse_ffn.stats.label[0]} {100 * result.sparsity:.2f}%"
                      if result.sparsity is not None else ""))
