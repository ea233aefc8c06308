"""`hybridinfer` entry point: the command group and the one place user errors become a one-line message."""

from __future__ import annotations

import logging
import sys

import click

from ..errors import HybridInferError
from .bench_cmd import bench
from .chat_cmd import chat
from .convert_cmd import convert
from .generate_cmd import generate
from .info_cmd import fetch, info
from .perplexity_cmd import perplexity
from .predictors_cmd import predictors
from .profile_cmd import profile
from .split_cmd import split


class _Group(click.Group):
    """Turns HybridInferError into `error: ...` on stderr with exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HybridInferError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="hybridinfer")
def cli():
    """hybridinfer: activation-sparse LLM inference (GGUF models)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)


cli.add_command(generate)
cli.add_command(chat)
cli.add_command(info)
cli.add_command(fetch)
cli.add_command(convert)
cli.add_command(predictors)
cli.add_command(perplexity)
cli.add_command(profile)
cli.add_command(split)
cli.add_command(bench)
