"""`hybridinfer serve` under faults: malformed and ill-typed requests, unsupported features, a prompt too long,
a missing API key, a full queue, clients that go away. Each answer is OpenAI's error shape (never a 500 for the
client's mistake) and the server answers /health afterwards.

One real server for the file: uvicorn in a thread with one slot, a queue of one and an API key. A generation
with `ignore_eos` runs to the end of its 8192-token context (~4 s on a 2-core machine): it holds the slot
while a test needs it busy, and the tests show it is freed at once when its client goes away.
"""

import json
import threading
import time

import httpx
import numba
import openai
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

import hybridinfer
from hybridinfer.cli.serve_cmd import bind_socket, socket_url
from hybridinfer.serve.app import create_app
from hybridinfer.serve.openai_errors import install_error_handlers
from hybridinfer.serve.scheduler import Scheduler
from tiny_models import random_weights, write_tiny_gguf

KEY = "sk-test-key"
N_CTX = 8192
LONG = {"prompt": "the", "max_tokens": -1, "temperature": 0, "ignore_eos": True}  # until the context is full
FREED_WITHIN_S = 1.0  # a cancelled generation leaves its slot this fast (running to its end takes ~4 s)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(an httpx client with the API key for the running server, the server's engine)."""
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=N_CTX)
    counts = torch.get_num_threads(), numba.get_num_threads()  # one thread here, as in test_server.py
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, warmup=True, n_threads=1)
    scheduler = Scheduler(engine, n_parallel=1, max_queue=1)
    listener = bind_socket("127.0.0.1", 0)
    listener.listen()
    config = uvicorn.Config(create_app(engine, scheduler, api_key=KEY), log_level="warning",
                            timeout_graceful_shutdown=1)
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not uvicorn_server.started:
        assert thread.is_alive(), "the server thread died"
        time.sleep(0.01)
    with httpx.Client(base_url=socket_url(listener), headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as client:
        yield client, engine
    uvicorn_server.should_exit = True
    thread.join(10)
    scheduler.close()
    listener.close()
    torch.set_num_threads(counts[0])
    numba.set_num_threads(counts[1])


@pytest.fixture
def server(served):
    return served[0]


def url(client: httpx.Client, path: str) -> str:
    return str(client.base_url).rstrip("/") + path


def assert_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_alive(client: httpx.Client, idle: bool = True) -> None:
    """The server answers /health; with `idle`, its slot frees and its queue empties within FREED_WITHIN_S."""
    deadline = time.monotonic() + FREED_WITHIN_S
    while True:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        busy = health.json()["slots_busy"] or health.json()["queued"]
        if not idle or not busy:
            break
        assert time.monotonic() < deadline, f"the slot was not freed: {health.json()}"
        time.sleep(0.02)
    short = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] <= 2


def post(client, path, body, **kwargs):
    return client.post(path, content=body if isinstance(body, (bytes, str)) else None,
                       json=None if isinstance(body, (bytes, str)) else body, **kwargs)


@pytest.mark.parametrize("body", [b'{"prompt": "hello", ', b"not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"',
                                  b"[" * 100000 + b"]" * 100000])
def test_malformed_json_is_a_400(server, body):
    assert_error(post(server, "/v1/completions", body), 400)
    assert_error(post(server, "/v1/chat/completions", body), 400)
    assert_alive(server)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "seed": True}, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": [chr(97 + i) for i in range(17)]}, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": 7}, "stop"),
    ("/v1/completions", {"prompt": [1, "two"]}, "prompt"),
    ("/v1/completions", {"prompt": {"text": "x"}}, "prompt"),
    ("/v1/completions", {"max_tokens": 3}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -2}, "max_tokens"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream_options": []},
     "stream_options"),
])
def test_a_known_field_of_the_wrong_type_is_a_400_naming_it(server, path, body, param):
    assert_error(post(server, path, body), 400, param=param)
    assert_alive(server)


def test_unknown_fields_are_ignored(server):
    body = {"prompt": "hello", "max_tokens": 2, "temperature": 0, "user": "u1", "metadata": {"a": 1},
            "some_future_field": [1, {"x": None}], "top_k": None}
    assert post(server, "/v1/completions", body).status_code == 200
    chat = {"messages": [{"role": "user", "content": "hi", "name": "bob"}], "max_tokens": 2,
            "parallel_tool_calls": False, "store": False}
    assert post(server, "/v1/chat/completions", chat).status_code == 200
    assert_alive(server)


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/completions", {"n": 2}, "n"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": "end"}, "suffix"),
    ("/v1/chat/completions", {"n": 3}, "n"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
])
def test_unsupported_features_are_a_400_naming_the_field(server, path, extra, param):
    base = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    assert_error(post(server, path, {**base, "max_tokens": 2, **extra}), 400, param=param)
    assert_alive(server)


@pytest.mark.parametrize("field, value", [("top_p", 5.0), ("min_p", -1.0), ("repeat_penalty", 0.0),
                                          ("seed", -5), ("repeat_last_n", -7), ("temperature", float("inf")),
                                          # finite in float64, not in the sampler's float32: once NaN logits (500)
                                          ("presence_penalty", -1e39), ("presence_penalty", -1e308),
                                          ("frequency_penalty", -1e308), ("repeat_penalty", 1e-300),
                                          ("repeat_penalty", 1e39), ("frequency_penalty", 3.0)])
def test_bad_sampling_values_are_a_400_naming_the_field(server, field, value):
    body = b'{"prompt": "hi", "%s": %s}' % (field.encode(), b"Infinity" if value == float("inf") else
                                              str(value).encode())
    error = assert_error(post(server, "/v1/completions", body), 400, param=field)
    assert field in error["message"] and "--" not in error["message"]
    if "penalty" in field:
        assert "must be between" in error["message"], error
    assert_alive(server)


@pytest.mark.parametrize("extreme", [{"temperature": 1e39}, {"temperature": 1e-300}, {"temperature": 1e308},
                                     {"top_p": 1e-300, "min_p": 1e-300}, {"repeat_penalty": 0.01},
                                     {"repeat_penalty": 100.0, "presence_penalty": -2.0, "frequency_penalty": 2.0}])
def test_extreme_sampling_values_in_range_answer(server, extreme):
    """Accepted values a float32 cannot hold (a temperature of 1e39) are computed safely: an answer, not NaN."""
    body = {"prompt": "the the the", "max_tokens": 3, "ignore_eos": True, "repeat_last_n": -1, **extreme}
    answer = post(server, "/v1/completions", body)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3, answer.text
    chat = {"messages": [{"role": "user", "content": "the the"}], "max_tokens": 2, "ignore_eos": True, **extreme}
    assert post(server, "/v1/chat/completions", chat).status_code == 200


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", rb'{"prompt": "hi \ud800", "max_tokens": 2}', "prompt"),
    ("/v1/completions", rb'{"prompt": ["\udc00"], "max_tokens": 2}', "prompt.0"),
    ("/v1/completions", rb'{"prompt": "hi", "stop": ["a", "\uDBFF"]}', "stop.1"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": "hi \ud800"}]}', "messages.0.content"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "us\ud800er", "content": "hi"}]}', "messages.0.role"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]}',
     "messages.0.content.0.text"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": "hi"}], "x\ud800": 1}', "x\\ud800"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(server, path, body, param):
    """JSON may escape half of a UTF-16 pair (\\ud800) alone: not Unicode, so no tokenizer takes it (raw bytes
    here: Python's clients refuse to encode such strings)."""
    error = assert_error(post(server, path, body, headers={"Content-Type": "application/json"}), 400, param=param)
    assert "surrogate" in error["message"]
    assert_alive(server)


def test_an_escaped_surrogate_pair_is_text(server):
    body = rb'{"prompt": "hi \ud83d\ude00", "max_tokens": 2, "temperature": 0}'
    assert post(server, "/v1/completions", body).status_code == 200


def test_a_prompt_that_fills_the_context_is_refused_with_context_length_exceeded(server):
    assert_error(post(server, "/v1/completions", {"prompt": [1] * N_CTX}), 400, "prompt", "context_length_exceeded")
    assert_error(post(server, "/v1/completions", {"prompt": "hello " * N_CTX}), 400, code="context_length_exceeded")
    chat = {"messages": [{"role": "user", "content": "the " * N_CTX}]}
    assert_error(post(server, "/v1/chat/completions", chat), 400, "messages", "context_length_exceeded")
    assert post(server, "/v1/completions", {"prompt": [1] * (N_CTX - 1), "max_tokens": 1}).status_code == 200
    assert_alive(server)


def test_token_ids_outside_the_vocabulary_and_an_empty_prompt_are_a_400(server):
    assert "vocabulary" in assert_error(post(server, "/v1/completions", {"prompt": [1, 10**6]}), 400)["message"]
    assert_error(post(server, "/v1/completions", {"prompt": [1, -3]}), 400)
    assert_error(post(server, "/v1/completions", {"prompt": []}), 400)
    assert_alive(server)


def test_every_endpoint_but_health_needs_the_api_key(server):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        assert_error(server.get("/v1/models", headers=headers), 401, code="invalid_api_key")
        assert_error(server.post("/v1/completions", json={"prompt": "x"}, headers=headers), 401)
        assert_error(server.post("/v1/chat/completions", content=b"{bad json", headers=headers), 401)
    assert httpx.get(url(server, "/health")).status_code == 200  # no key at all
    assert server.get("/v1/models").json()["data"][0]["id"] == "tiny.gguf"
    wrong = openai.OpenAI(base_url=url(server, "/v1"), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="x", max_tokens=1)
    right = openai.OpenAI(base_url=url(server, "/v1"), api_key=KEY, max_retries=0)
    assert right.completions.create(model="tiny", prompt="x", max_tokens=1).usage.completion_tokens <= 1
    assert_alive(server)


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    assert_error(server.get("/v1/nothing"), 404)
    assert_error(server.delete("/v1/completions"), 405)
    assert_alive(server)


def data_events(response: httpx.Response):
    """The data payloads of a server-sent event stream as they arrive. Keep this one iterator: dropping an
    unfinished `iter_lines()` closes the connection (the server then sees its client go away)."""
    return (line[len("data: "):] for line in response.iter_lines() if line.startswith("data: "))


def test_a_client_that_disconnects_mid_stream_frees_its_slot_at_once(server):
    with server.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
        assert response.status_code == 200
        events = data_events(response)
        assert all(json.loads(next(events))["choices"][0]["finish_reason"] is None for _ in range(3))
        assert server.get("/health").json()["slots_busy"] == 1
    assert_alive(server)  # slot freed within FREED_WITHIN_S, long before the generation would have ended


def test_a_client_that_disconnects_while_waiting_for_a_whole_answer_frees_its_slot(server):
    with pytest.raises(httpx.ReadTimeout):
        server.post("/v1/completions", json=LONG, timeout=httpx.Timeout(30, read=0.3))
    assert_alive(server)


def test_a_full_queue_is_a_503_and_the_server_recovers(server):
    chat = {"messages": [{"role": "user", "content": "the"}], "temperature": 0, "stream": True}
    with server.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running:
        events = data_events(running)
        assert [next(events), next(events)]  # the only slot is busy for seconds
        with server.stream("POST", "/v1/chat/completions", json=chat) as waiting:
            assert waiting.status_code == 200
            deadline = time.monotonic() + 5
            while server.get("/health").json()["queued"] != 1:
                assert time.monotonic() < deadline, server.get("/health").json()
                time.sleep(0.01)
            assert_error(server.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}), 503,
                         code="queue_full")
            assert_error(server.post("/v1/chat/completions", json={**chat, "stream": True}), 503)
            busy = openai.OpenAI(base_url=url(server, "/v1"), api_key=KEY, max_retries=0)
            with pytest.raises(openai.InternalServerError):
                busy.completions.create(model="tiny", prompt="x", max_tokens=1)
    assert_alive(server)  # both cancelled: the queued one never runs, the running one stops


def test_an_engine_failure_is_a_500_whole_or_an_error_event_streamed(served, monkeypatch):
    server, engine = served

    def broken_feed(*args, **kwargs):
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(engine, "feed", broken_feed)  # the scheduler's thread evaluates prompts with it
    error = assert_error(post(server, "/v1/completions", {"prompt": "hello", "max_tokens": 4}), 500)
    assert "the engine broke" in error["message"] and error["type"] == "server_error"
    with server.stream("POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                              "stream": True}) as response:
        events = list(data_events(response))
    assert "the engine broke" in json.loads(events[-1])["error"]["message"] and "[DONE]" not in events
    monkeypatch.undo()
    assert_alive(server)


def test_an_unexpected_exception_is_a_500_in_openai_shape():
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in response.json()["error"]["message"]
