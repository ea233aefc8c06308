"""`hybridinfer serve` and clients that break off at the socket level: one that half-closes (shutdown(SHUT_WR))
after its whole request, one whose body stops short of its Content-Length. Each ends cleanly (an answer, or the
connection closed with no bytes), nothing is logged, and the server answers the next request. Raw sockets
against a real server on an ephemeral port; the key comes from $HYBRIDINFER_API_KEY."""

import os
import socket
import time

import httpx
import pytest

from tiny_models import random_weights, write_tiny_gguf
from server_process import running_server

KEY = "sk-connections"
BODY = b'{"prompt": "hello", "max_tokens": 3, "temperature": 0}'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(host, port, the server's stderr lines so far)."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=512)
    with running_server(["-m", path, "-t", "1"], env={**os.environ, "HYBRIDINFER_API_KEY": KEY},
                        clean_log=False) as process:
        yield (*process.host_and_port, process.lines)


def request(body: bytes, length: int | None = None) -> bytes:
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) if length is None else length}\r\n\r\n")
    return head.encode() + body


def exchange(server, data: bytes, *, half_close: bool, read: bool = True) -> bytes:
    """Send `data`, half-close or not, and read until the server closes (or close at once without `read`)."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        reply = b""
        while read and (part := conn.recv(65536)):
            reply += part
    return reply


def assert_quiet_and_alive(server, since: int):
    """Nothing logged after line `since` (no traceback), and the next request, on a new connection, is answered."""
    host, port, lines = server
    answer = httpx.post(f"http://{host}:{port}/v1/completions", content=BODY, timeout=30,
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3, answer.text
    time.sleep(0.2)  # a log line of the broken connection would be written by now
    log = "".join(lines[since:])
    assert "Traceback" not in log and "ERROR" not in log and log.count("\n") <= 1, log


def test_a_client_that_half_closes_after_its_request_gets_an_answer_or_a_clean_close(server):
    since = len(server[2])
    reply = exchange(server, request(BODY), half_close=True)  # ends: the server closes, never hangs
    assert reply == b"" or reply.startswith(b"HTTP/1.1 200 "), reply
    assert_quiet_and_alive(server, since)


@pytest.mark.parametrize("half_close", [False, True])
def test_a_body_shorter_than_its_content_length_is_dropped_quietly(server, half_close):
    since = len(server[2])
    exchange(server, request(BODY, length=len(BODY) + 1000), half_close=half_close, read=half_close)
    assert_quiet_and_alive(server, since)


def test_a_request_cut_inside_its_headers_is_dropped_quietly(server):
    since = len(server[2])
    exchange(server, request(BODY)[:40], half_close=True)
    assert_quiet_and_alive(server, since)
