"""`hybridinfer` entry point: the command group and the one place user errors become a one-line message."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

import click

from ..errors import HybridInferError
from ..kernels import compile_time
from .bench_cmd import bench
from .chat_cmd import chat
from .convert_cmd import convert
from .generate_cmd import generate
from .info_cmd import fetch, info
from .perplexity_cmd import perplexity
from .predictors_cmd import predictors
from .profile_cmd import profile
from .serve_cmd import serve
from .sparsify_cmd import sparsify
from .split_cmd import split
from .warmup_cmd import warmup


class _Group(click.Group):
    """Turns HybridInferError into `error: ...` on stderr with exit status 1 (a usage error: 2), never a
    traceback or click's usage block; SIGTERM
    unwinds like Ctrl-C (so temporary files are removed) and exits 143."""

    def invoke(self, ctx):
        try:
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except HybridInferError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            sys.exit(1)
        except click.UsageError as exc:  # a bad flag or value: one line, with where to look, not the usage block
            command = exc.ctx.command_path if exc.ctx is not None else "hybridinfer"
            click.echo(f"error: {' '.join(exc.format_message().split())} (see `{command} --help`)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)


def one_line(message: str) -> str:
    """`message` with control characters (a newline in a tensor name read from a corrupt file) escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message)


@contextlib.contextmanager
def _sigterm_unwinds():
    """While a command runs, SIGTERM raises SystemExit(143) in the main thread: `finally` blocks and context
    managers (atomic_file.atomic_output's cleanup) run, as for SIGINT, instead of the process dying at once. From
    either interrupt on, a finalizer that fails prints nothing (`_quiet_finalizers`)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def exit_143(signum, frame):
        _quiet_finalizers()
        raise SystemExit(128 + signum)

    def interrupt(signum, frame):
        _quiet_finalizers()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, exit_143)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # not where SIGINT is ignored (a background job)
        signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def _quiet_finalizers() -> None:
    """An interrupt may leave an object half-built (a progress bar stopped in its constructor), whose finalizer then
    fails as it is collected; Python would print that error's traceback. It is not the user's: print nothing."""
    sys.unraisablehook = lambda unraisable: None


@click.group(cls=_Group)
@click.version_option(package_name="hybridinfer")
def cli():
    """hybridinfer: activation-sparse LLM inference (GGUF models)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    compile_time.announce(True)  # a first run says that it compiles, and how far it is


cli.add_command(generate)
cli.add_command(chat)
cli.add_command(info)
cli.add_command(fetch)
cli.add_command(convert)
cli.add_command(predictors)
cli.add_command(perplexity)
cli.add_command(profile)
cli.add_command(split)
cli.add_command(sparsify)
cli.add_command(bench)
cli.add_command(warmup)
cli.add_command(serve)
