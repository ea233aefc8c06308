"""`hybridinfer generate`: complete a prompt, streaming text to stdout and llama.cpp-style timings to stderr."""

from __future__ import annotations

import json
import sys

import click

from ..errors import HybridInferError
from ..hybrid.report import hybrid_report, report_lines
from .options import model_options, open_engine, runtime_settings, sampling_options, sampling_settings
from ..text.files import MAX_PROMPT_BYTES, read_text_file


@click.command()
@model_options
@click.option("-p", "--prompt", default=None, help="prompt text")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False), default=None,
              help="read the prompt from a file")
@click.option("-n", "--n-predict", "max_tokens", type=int, default=-1, show_default=True,
              help="tokens to generate (-1 = until end of text or full context)")
@click.option("-r", "--reverse-prompt", "--stop", "stop", multiple=True, help="stop when this text appears (repeatable)")
@click.option("--no-display-prompt", is_flag=True, help="do not echo the prompt before the generated text")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (text, tokens, timings) instead")
@sampling_options
def generate(prompt, prompt_file, max_tokens, stop, no_display_prompt, as_json, **kwargs):
    """Generate text from a prompt."""
    sampling = sampling_settings(kwargs)
    runtime = runtime_settings(kwargs)
    prompt = _read_prompt(prompt, prompt_file)
    engine = open_engine(*runtime)
    timings = engine.new_timings()
    pieces, tokens, finish = [], [], "length"
    stream = engine.stream(prompt, max_tokens=max_tokens, stop=list(stop), timings=timings, **sampling)
    if not as_json and not no_display_prompt:
        sys.stdout.write(prompt)
    for chunk in stream:
        pieces.append(chunk.text)
        if chunk.token is not None:
            tokens.append(chunk.token)
        finish = chunk.finish_reason or finish
        if not as_json:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    hybrid = hybrid_report(engine)
    if as_json:
        record = {"text": "".join(pieces), "tokens": tokens, "finish_reason": finish, "timings": timings.as_dict(),
                  "startup": engine.startup_report()}
        if hybrid is not None:
            record["hybrid"] = hybrid
        click.echo(json.dumps(record))
        return
    sys.stdout.write("\n")
    sys.stdout.flush()
    for line in timings.report_lines() + (report_lines(hybrid) if hybrid else []):
        click.echo(line, err=True)


def _read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    if prompt_file is not None:
        prompt = read_text_file(prompt_file, "the prompt file", MAX_PROMPT_BYTES)
    if not prompt:
        raise HybridInferError("no prompt: give one with -p TEXT or -f FILE")
    return prompt
