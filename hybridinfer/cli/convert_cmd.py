"""`hybridinfer convert`: a Hugging Face checkpoint directory to one GGUF file."""

from __future__ import annotations

import json

import click
from tqdm import tqdm

from ..convert import convert_checkpoint
from ..convert.outtypes import OUTTYPES


@click.command()
@click.argument("hf_dir", type=click.Path())
@click.option("-o", "--outfile", "output", required=True, type=click.Path(), help="GGUF file to write")
@click.option("--outtype", type=click.Choice(list(OUTTYPES)), default="f16", show_default=True,
              help="weight type of the 2-D tensors (norms stay f32; q4_0 keeps the output projection at q8_0; "
                   "q4_k_m, q5_k_m and q6_k are llama.cpp's mixes, tensor by tensor as llama-quantize chooses)")
@click.option("--force", is_flag=True, help="overwrite an existing output file")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary (tensors, bytes, seconds, peak RSS)")
def convert(hf_dir, output, outtype, force, as_json):
    """Convert a ProSparse / ReluLLaMA / LLaMA / MiniCPM / Qwen2 / Qwen3 / Llama 3 checkpoint to GGUF."""
    def progress(total):
        return tqdm(total=total, unit="B", unit_scale=True, desc="converting", disable=as_json)

    summary = convert_checkpoint(hf_dir, output, outtype=outtype, force=force, progress=progress)
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        click.echo(f"wrote {summary.output}: {summary.architecture}, {summary.activation}, {summary.outtype}, "
                   f"{summary.tensors} tensors, {summary.output_bytes / 2**20:.1f} MiB in {summary.seconds:.1f} s "
                   f"({summary.input_mb_per_s:.0f} MB/s of input, peak RSS {summary.peak_rss_mb:.0f} MB)", err=True)
