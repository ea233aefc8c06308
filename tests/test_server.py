"""`hybridinfer serve` driven by OpenAI's own Python client: completions and chat, whole and streamed, stop
strings, usage, and greedy answers equal to `Engine.generate` and `hybridinfer generate` for the same prompt;
a bounded load test (32 requests from 8 threads over 4 slots, some streamed, some abandoned mid-stream).

One real server for the file: `python -m hybridinfer serve --port 0 --parallel 4` in a subprocess, found by
the line it prints on stderr.
"""

import json
import random
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from click.testing import CliRunner

import hybridinfer
from hybridinfer.cli.main import cli
from hybridinfer.text.prompts import chat_prompt_tokens
from tiny_models import random_weights, write_tiny_gguf
from server_process import running_server

N_CTX, N_PARALLEL = 1024, 4  # each slot holds 256 tokens
PROMPTS = ["hello world", "the", "a story of the world", "it is", "and to the"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=N_CTX)


pytestmark = pytest.mark.usefixtures("threads_restored")


@pytest.fixture(scope="module")
def engine(model):
    """The same model in this process: what a single greedy request must answer."""
    return hybridinfer.load(str(model), n_ctx=N_CTX // N_PARALLEL, n_threads=1)


@pytest.fixture(scope="module")
def server(model):
    """The base URL of a running `hybridinfer serve`; its stderr must hold no traceback at the end."""
    with running_server(["-m", model, "-c", N_CTX, "--parallel", N_PARALLEL, "-t", "1"]) as process:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", process.url) and not process.url.endswith(":0")
        yield process.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_and_models(server, client):
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "slots_busy": 0, "slots": N_PARALLEL, "queued": 0}
    assert [m.id for m in client.models.list().data] == ["tiny.gguf"]


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_completion_equals_engine_generate(client, engine, prompt):
    expected = engine.generate(prompt, max_tokens=20, temperature=0)
    answer = client.completions.create(model="tiny.gguf", prompt=prompt, max_tokens=20, temperature=0)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-") and answer.model == "tiny.gguf"
    assert answer.choices[0].text == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason
    prompt_tokens = len(engine.tokenize(prompt))
    assert answer.usage.prompt_tokens == prompt_tokens
    assert answer.usage.completion_tokens == len(expected.tokens)
    assert answer.usage.total_tokens == prompt_tokens + len(expected.tokens)
    assert 0 <= answer.usage.prompt_tokens_details.cached_tokens < prompt_tokens


def test_a_repeated_prompt_reuses_the_cached_prefix(client):
    prompt = "and to the world of a hello"
    first = client.completions.create(model="x", prompt=prompt, max_tokens=4, temperature=0)
    again = client.completions.create(model="x", prompt=prompt, max_tokens=4, temperature=0)
    assert again.choices[0].text == first.choices[0].text
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1  # one is evaluated


def test_greedy_completion_equals_the_cli_generate_output(client, model):
    result = CliRunner().invoke(cli, ["generate", "-m", str(model), "-p", "it is", "-n", "12", "--temp", "0",
                                      "--json", "--no-warmup", "-t", "1"])
    assert result.exit_code == 0, result.output
    answer = client.completions.create(model="x", prompt="it is", max_tokens=12, temperature=0)
    assert answer.choices[0].text == json.loads(result.stdout)["text"]


def test_completions_default_to_16_tokens_and_take_token_ids(client, engine):
    expected = engine.generate("the", max_tokens=16, temperature=0)
    answer = client.completions.create(model="x", prompt="the", temperature=0)
    assert answer.choices[0].text == expected.text
    by_ids = client.completions.create(model="x", prompt=engine.tokenize("the"), temperature=0)
    assert by_ids.choices[0].text == expected.text
    assert client.completions.create(model="x", prompt=["the"], temperature=0).choices[0].text == expected.text


def test_streamed_completion_joins_to_the_whole_answer(client, engine):
    expected = engine.generate("hello world", max_tokens=24, temperature=0)
    stream = client.completions.create(model="x", prompt="hello world", max_tokens=24, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == expected.finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.tokens)
    assert all(c.usage is None for c in chunks[:-1])


def chat_expected(engine, messages, max_tokens, **kwargs):
    return engine.generate(chat_prompt_tokens(engine.tokenizer, messages, None), max_tokens=max_tokens,
                           temperature=0, **kwargs)


def test_greedy_chat_renders_the_chat_template(client, engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    expected = chat_expected(engine, messages, 20)
    answer = client.chat.completions.create(model="x", messages=messages, max_tokens=20, temperature=0)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == expected.finish_reason
    assert answer.usage.completion_tokens == len(expected.tokens)
    newer = client.chat.completions.create(model="x", messages=messages, max_completion_tokens=20, temperature=0)
    assert newer.choices[0].message.content == expected.text


def test_streamed_chat_sends_the_role_then_the_text_then_the_finish_reason(client, engine):
    messages = [{"role": "user", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "world"}]}]
    expected = chat_expected(engine, [{"role": "user", "content": "the world"}], 16)
    chunks = list(client.chat.completions.create(model="x", messages=messages, max_tokens=16, temperature=0,
                                                 stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason


def test_stop_strings_end_the_answer_before_them(client, engine):
    whole = engine.generate("a story of the world", max_tokens=24, temperature=0).text
    stop = next(ch for ch in whole[3:] if ch.isalnum())
    expected = engine.generate("a story of the world", max_tokens=24, temperature=0, stop=[stop])
    assert expected.finish_reason == "stop" and stop not in expected.text
    for given in (stop, [stop], ["\x00never", stop]):
        answer = client.completions.create(model="x", prompt="a story of the world", max_tokens=24, temperature=0,
                                           stop=given)
        assert (answer.choices[0].text, answer.choices[0].finish_reason) == (expected.text, "stop")
    streamed = client.completions.create(model="x", prompt="a story of the world", max_tokens=24, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected.text


def test_ignore_eos_generates_every_token_asked_for(client):
    answer = client.completions.create(model="x", prompt="the", max_tokens=40, temperature=1.5, seed=3,
                                       extra_body={"ignore_eos": True})
    assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == (40, "length")


def test_a_seeded_sampled_answer_repeats(client):
    def ask():
        return client.completions.create(model="x", prompt="the", max_tokens=12, temperature=0.9, top_p=0.9,
                                         seed=1234).choices[0].text
    assert ask() == ask()


def test_32_requests_from_8_threads_over_4_slots_get_their_own_answers(server, client, engine):
    expected = {p: engine.generate(p, max_tokens=24, temperature=0).text for p in PROMPTS}
    rng = random.Random(5)
    jobs = [(PROMPTS[i % len(PROMPTS)], ("whole", "stream", "abandon")[rng.randrange(3)]) for i in range(32)]

    def run(job):
        prompt, mode = job
        if mode == "whole":
            return client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
        stream = client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0, stream=True)
        pieces = []
        for chunk in stream:
            pieces.append(chunk.choices[0].text)
            if mode == "abandon" and len(pieces) == 3:
                stream.close()
                break
        return "".join(pieces)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, jobs))
    for (prompt, mode), answer in zip(jobs, answers):
        if mode == "abandon":
            assert expected[prompt].startswith(answer), (prompt, answer)
        else:
            assert answer == expected[prompt], (prompt, mode)
    deadline = time.monotonic() + 5
    while (health := httpx.get(f"{server}/health").json())["slots_busy"] or health["queued"]:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_a_port_in_use_is_a_one_line_error(model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "hybridinfer", "serve", "-m", str(model), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
