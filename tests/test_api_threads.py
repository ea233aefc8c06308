"""One Engine shared by threads: calls run one at a time (a stream from its first chunk until it ends or is
closed), so each thread gets the text it gets alone; the thread whose stream is still open gets a
HybridInferError, not a deadlock, when it calls the engine again."""

import threading
import time

import pytest

import hybridinfer
from hybridinfer.errors import HybridInferError
from tiny_models import random_weights, write_tiny_gguf

PROMPTS = ("the world of a", "hello is it")
N_TOKENS = 40
TIMEOUT = 120  # seconds a thread may take before the test calls it a deadlock


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=21), context_length=128)
    return hybridinfer.load(str(path), n_ctx=128)


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def engine(request, tiny_engine):
    if request.param == "tiny":
        return tiny_engine
    return hybridinfer.load(str(request.getfixturevalue("smollm_path")), n_ctx=256)


def greedy(engine, prompt: str) -> str:
    return engine.generate(prompt, max_tokens=N_TOKENS, temperature=0).text


def in_threads(*calls) -> list:
    """Run the calls in threads started together; their results, in order."""
    results, errors = [None] * len(calls), []
    start = threading.Barrier(len(calls))

    def run(i):
        try:
            start.wait()
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread is still waiting: a deadlock"
    assert not errors, errors
    return results


def test_two_threads_generating_on_one_engine_each_get_their_text_alone(engine):
    alone = [greedy(engine, prompt) for prompt in PROMPTS]
    assert alone[0] != alone[1]
    for _ in range(3):
        assert in_threads(*(lambda p=prompt: greedy(engine, p) for prompt in PROMPTS)) == alone


def test_a_stream_and_a_generation_in_two_threads_each_get_their_text_alone(tiny_engine):
    alone = [greedy(tiny_engine, prompt) for prompt in PROMPTS]

    def slow_stream():
        pieces = []
        for chunk in tiny_engine.stream(PROMPTS[0], max_tokens=N_TOKENS, temperature=0):
            pieces.append(chunk.text)
            time.sleep(0.001)  # the other thread asks for the engine meanwhile
        return "".join(pieces)

    assert in_threads(slow_stream, lambda: greedy(tiny_engine, PROMPTS[1])) == alone


def test_an_open_stream_holds_the_engine_until_it_is_closed(tiny_engine):
    stream = tiny_engine.stream(PROMPTS[0], max_tokens=N_TOKENS, temperature=0)
    other = threading.Thread(target=lambda: tiny_engine.logits([1, 2]), daemon=True)
    other.start()
    other.join(0.5)
    assert not other.is_alive()  # a stream not yet started holds nothing
    next(stream)
    other = threading.Thread(target=lambda: tiny_engine.logits([1, 2]), daemon=True)
    other.start()
    other.join(0.5)
    assert other.is_alive()  # waits for the stream
    stream.close()
    other.join(TIMEOUT)
    assert not other.is_alive()


@pytest.mark.parametrize("call", [lambda e: e.generate("x", max_tokens=2), lambda e: next(e.stream("x")),
                                  lambda e: e.logits([1, 2]), lambda e: e.reset(), lambda e: e.feed([1, 2])])
def test_calling_the_engine_while_its_own_stream_is_open_in_the_same_thread_is_an_error(tiny_engine, call):
    alone = greedy(tiny_engine, PROMPTS[0])
    stream = tiny_engine.stream(PROMPTS[0], max_tokens=N_TOKENS, temperature=0)
    first = next(stream)
    with pytest.raises(HybridInferError, match="a stream of this engine is still open in the same thread"):
        call(tiny_engine)
    assert first.text + "".join(chunk.text for chunk in stream) == alone  # the stream goes on unharmed
    assert greedy(tiny_engine, PROMPTS[0]) == alone


def test_leaving_a_stream_early_frees_the_engine(tiny_engine):
    alone = greedy(tiny_engine, PROMPTS[1])
    for _ in tiny_engine.stream(PROMPTS[0], max_tokens=N_TOKENS, temperature=0):
        break
    assert greedy(tiny_engine, PROMPTS[1]) == alone
    try:
        for _ in tiny_engine.stream(PROMPTS[0], max_tokens=N_TOKENS, temperature=0):
            raise KeyboardInterrupt  # as Ctrl-C during a chat reply
    except KeyboardInterrupt:
        pass
    assert greedy(tiny_engine, PROMPTS[1]) == alone
