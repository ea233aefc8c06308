"""`hybridinfer serve`: an OpenAI-compatible HTTP server for one model, as llama.cpp's `llama-server`.

The port is bound before the model loads, so a port in use is a one-line error at once; connections are
accepted once the model is ready, and one line on stderr says where (`server listening on http://...`).
"""

from __future__ import annotations

import os
import socket
import threading

import click
from click.core import ParameterSource

from ..errors import HybridInferError
from ..generation.sampling import SamplerSettings
from ..serve.openai_sampling import OPENAI_SAMPLING
from .options import model_options, open_engine, runtime_settings, sampling_flags, sampling_settings

API_KEY_ENV = "HYBRIDINFER_API_KEY"
GRACEFUL_SHUTDOWN_S = 3  # after Ctrl-C or SIGTERM, how long requests still running may take to finish


@click.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all interfaces)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="port to listen on (0 = any free port; the line on stderr says which)")
@click.option("--api-key", envvar=API_KEY_ENV, default=None,
              help=f"require 'Authorization: Bearer KEY' on every endpoint but /health; printable ASCII, no spaces "
                   f"(env: {API_KEY_ENV})")
@click.option("-np", "--parallel", "n_parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="requests decoded at once; each slot holds -c / N tokens of context")
@click.option("--queue-size", type=click.IntRange(min=0), default=64, show_default=True,
              help="requests that may wait for a slot; more are answered 503")
@click.option("--chat-template", default=None,
              help="a Jinja chat template, or a built-in name (llama2, chatml, minicpm); default: the model's own")
@sampling_flags(OPENAI_SAMPLING, " of requests that give none")
def serve(host, port, api_key, n_parallel, queue_size, chat_template, **kwargs):
    """Serve the model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models) and vLLM's
    tokenizer endpoints (/tokenizer_info, /tokenize, /detokenize)."""
    defaults = SamplerSettings(**sampling_settings(kwargs))
    api_key = _api_key(api_key)
    listener = bind_socket(host, port)
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..text.prompts import chat_prompt_tokens
        from ..serve.scheduler import Scheduler

        engine = open_engine(*runtime_settings(kwargs))
        if chat_template:  # a bad name or template fails now, not at every chat request
            chat_prompt_tokens(engine.tokenizer, [{"role": "user", "content": "hi"}], chat_template)
        scheduler = Scheduler(engine, n_parallel=n_parallel, max_queue=queue_size, start=False)
        app = create_app(engine, scheduler, api_key=api_key, chat_template=chat_template,
                         sampling_defaults=defaults)
        listener.listen(2048)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        server = uvicorn.Server(config)

        def answer_http() -> None:  # uvicorn on a thread of its own: decoding runs faster on the main thread
            try:
                server.run(sockets=[listener])
            finally:
                scheduler.close()

        http = threading.Thread(target=answer_http, name="hybridinfer-http", daemon=True)
        http.start()
        click.echo(f"server listening on {socket_url(listener)}", err=True)
        try:
            scheduler.run()  # until the HTTP side stops, Ctrl-C or SIGTERM
        finally:
            server.should_exit = True
            http.join(GRACEFUL_SHUTDOWN_S + 2)
    finally:
        listener.close()


def _api_key(flag: str | None) -> str | None:
    """The key from --api-key or $HYBRIDINFER_API_KEY, refused if empty or unsendable (`serve.api_key`); None if
    neither is set. Click reads an empty variable as unset: an empty one is refused here, as an empty flag is."""
    from ..serve.api_key import usable_api_key  # imported here: FastAPI and pydantic only when serving

    if flag is None:
        if os.environ.get(API_KEY_ENV) == "":
            usable_api_key("", API_KEY_ENV)
        return None
    from_env = click.get_current_context().get_parameter_source("api_key") == ParameterSource.ENVIRONMENT
    return usable_api_key(flag, API_KEY_ENV if from_env else "--api-key")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (not yet listening); a one-line error if that cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise HybridInferError(f"cannot listen on --host {host}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise HybridInferError(f"cannot listen on {host}:{port}: {exc.strerror}; is another server running there? "
                               "choose another --port (0 picks a free one)") from None
    return listener


def socket_url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://[{host}]:{port}" if listener.family == socket.AF_INET6 else f"http://{host}:{port}"
