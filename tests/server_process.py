"""`hybridinfer serve` in a child process for the server tests: started on a free port, its stderr drained on a
thread, stopped at the end; with `clean_log`, its log must then hold no traceback or ERROR line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

START_TIMEOUT_S = 600  # a first run on a fresh, busy machine compiles the CPU kernels before it listens
LISTENING = "server listening on "


@dataclass
class ServerProcess:
    url: str  # http://127.0.0.1:PORT
    lines: list[str] = field(default_factory=list)  # its stderr so far

    @property
    def host_and_port(self) -> tuple[str, int]:
        host, port = self.url.split("//")[-1].rsplit(":", 1)
        return host, int(port)


@contextmanager
def running_server(args: list[str], env: dict | None = None, clean_log: bool = True) -> Iterator[ServerProcess]:
    """`hybridinfer serve ARGS --port 0`, yielded once it listens."""
    command = [sys.executable, "-m", "hybridinfer", "serve", *map(str, args), "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    listening = threading.Event()

    def drain():
        for line in process.stderr:
            lines.append(line)
            if line.startswith(LISTENING):
                listening.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not listening.wait(0.1):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        url = next(line for line in lines if line.startswith(LISTENING)).split()[-1]
        yield ServerProcess(url, lines)
    finally:
        process.terminate()
        process.wait(30)
    log = "".join(lines)
    if clean_log:
        assert "Traceback" not in log and "ERROR" not in log, log
