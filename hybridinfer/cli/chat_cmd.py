"""`hybridinfer chat`: interactive multi-turn chat with the model's chat template.

Each turn renders the whole conversation and feeds it; the engine reuses the KV cache for the prefix it
already holds, so only the new part of the conversation is evaluated. Ctrl-C interrupts a reply, Ctrl-D or
/bye quits, /clear starts over.
"""

from __future__ import annotations

import sys

import click

from ..text.prompts import chat_prompt_tokens, chat_template_for
from ..engine import Engine
from ..errors import HybridInferError
from ..generation.generate import Timings
from .options import model_options, open_engine, runtime_settings, sampling_options, sampling_settings
from ..text.files import MAX_PROMPT_BYTES

HELP = "commands: /clear starts over, /bye (or Ctrl-D) quits, Ctrl-C interrupts a reply"


@click.command()
@model_options
@click.option("--system", "system_prompt", default=None, help="system message")
@click.option("--chat-template", default=None,
              help="a Jinja chat template, or a built-in name (llama2, chatml, minicpm); default: the model's own")
@click.option("-n", "--n-predict", "max_tokens", type=int, default=-1, help="maximum tokens per reply (-1 = no limit)")
@click.option("--timings", "show_timings", is_flag=True, help="print llama.cpp-style timings after each reply")
@sampling_options
def chat(system_prompt, chat_template, max_tokens, show_timings, **kwargs):
    """Chat with a model interactively."""
    sampling = sampling_settings(kwargs)
    engine = open_engine(*runtime_settings(kwargs))
    template = chat_template_for(engine, chat_template)
    start = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(HELP, err=True)
    while True:
        if interactive:
            click.echo("> ", nl=False)
        line = sys.stdin.readline(MAX_PROMPT_BYTES + 1)
        if len(line) > MAX_PROMPT_BYTES and not line.endswith("\n"):
            raise HybridInferError(f"a chat message (one line of input) is longer than {MAX_PROMPT_BYTES // 2**20} Mi "
                                   "characters, the most hybridinfer reads for one; send shorter lines")
        if not line or line.strip() == "/bye":
            break
        text = line.rstrip("\n")
        if text.strip() == "/clear":
            messages = list(start)
            engine.reset()
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        reply, timings = _reply(engine, messages, template, max_tokens, sampling)
        messages.append({"role": "assistant", "content": reply})
        if show_timings:
            for report in timings.report_lines():
                click.echo(report, err=True)


def _reply(engine: Engine, messages: list[dict], template, max_tokens: int, sampling: dict) -> tuple[str, Timings]:
    prompt = chat_prompt_tokens(engine.tokenizer, messages, template)
    timings = engine.new_timings()
    pieces = []
    try:
        for chunk in engine.stream(prompt, max_tokens=max_tokens, timings=timings, **sampling):
            pieces.append(chunk.text)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass  # the reply so far stays in the conversation
    sys.stdout.write("\n")
    return "".join(pieces), timings
