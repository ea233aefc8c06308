"""The serve slots (`serve/scheduler.py`) without HTTP: completions decoded together answer as each alone,
prompts share a slot's cached prefix, a full queue refuses, a cancelled completion leaves its slot."""

import threading

import numba
import torch

import pytest
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.generation.sampling import SamplerSettings
from hybridinfer.serve.scheduler import Completion, QueueFull, Scheduler
from tiny_models import random_weights, write_tiny_gguf

GREEDY = SamplerSettings(temperature=0)
PROMPTS = ["the quick brown fox", "a b c", "once upon a time there", "hello", "zzz yyy", "the quick brown dog"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "q8.gguf", random_weights(seed=31, n_ff=256, gate_bias=-8.0),
                           weight_type=T.Q8_0, context_length=512, activation="fatrelu", threshold=0.05)


class Received:
    def __init__(self):
        self.pieces, self.finish, self.done = [], None, threading.Event()

    def __call__(self, chunk):
        self.pieces.append(chunk.text)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
            self.done.set()

    @property
    def text(self):
        return "".join(self.pieces)


def completion(engine, prompt, max_tokens=12, **fields):
    received = Received()
    return Completion(engine.tokenize(prompt), max_tokens, [], fields.pop("sampling", GREEDY), received,
                      **fields), received


@pytest.mark.parametrize("exact", [False, True])
def test_completions_decoded_together_answer_as_each_alone(model, exact):
    alone = hybridinfer.load(str(model), n_ctx=128, exact=exact)
    expected = [alone.generate(p, max_tokens=12, temperature=0).text for p in PROMPTS]
    engine = hybridinfer.load(str(model), n_ctx=128 * 3, exact=exact)
    scheduler = Scheduler(engine, n_parallel=3)
    assert scheduler.n_ctx == 128
    jobs = [completion(engine, p) for p in PROMPTS]
    for job, _ in jobs:
        scheduler.submit(job)
    for (job, received), text in zip(jobs, expected):
        assert received.done.wait(60)
        assert received.finish == "length" and received.text == text and job.completion_tokens == 12
    assert scheduler.stats.steps < scheduler.stats.tokens  # steps decoded several at once
    scheduler.close()


def test_a_prompt_reuses_the_prefix_a_slot_holds(model):
    engine = hybridinfer.load(str(model), n_ctx=256)
    scheduler = Scheduler(engine, n_parallel=2)
    first, received = completion(engine, "the quick brown fox jumps", max_tokens=4)
    scheduler.submit(first)
    assert received.done.wait(60) and first.cached_tokens == 0
    again, received = completion(engine, "the quick brown fox jumps over", max_tokens=4)
    scheduler.submit(again)
    assert received.done.wait(60)
    assert again.cached_tokens == len(first.prompt)
    scheduler.close()


def test_a_full_queue_refuses_and_a_cancelled_completion_leaves_its_slot(model):
    engine = hybridinfer.load(str(model), n_ctx=256)
    scheduler = Scheduler(engine, n_parallel=1, max_queue=1)
    holding, release, chunks = threading.Event(), threading.Event(), []

    def held_up(chunk):  # the scheduler's thread waits here, with the running completion in its slot
        chunks.append(chunk)
        holding.set()
        release.wait(60)

    running = Completion(engine.tokenize("hello"), -1, [], GREEDY, held_up)
    scheduler.submit(running)
    assert holding.wait(60)
    waiting, waiting_received = completion(engine, "a b c", max_tokens=3)
    scheduler.submit(waiting)
    assert scheduler.status() == {"slots_busy": 1, "slots": 1, "queued": 1}
    with pytest.raises(QueueFull, match="try again later"):
        scheduler.submit(completion(engine, "zzz")[0])
    running.cancel()
    release.set()
    assert waiting_received.done.wait(60) and waiting_received.finish == "length"
    assert len(chunks) == 1  # nothing after the cancel
    assert scheduler.status() == {"slots_busy": 0, "slots": 1, "queued": 0}
    scheduler.close()


@pytest.fixture
def restored_threads():
    numba_threads, torch_threads = numba.get_num_threads(), torch.get_num_threads()
    yield
    numba.set_num_threads(numba_threads)
    torch.set_num_threads(torch_threads)


def test_a_cancelled_waiting_completion_frees_its_place_and_threads_follow_the_engine(model, restored_threads):
    engine = hybridinfer.load(str(model), n_ctx=256, n_threads=1)
    scheduler = Scheduler(engine, n_parallel=1, max_queue=1)
    holding, release, seen = threading.Event(), threading.Event(), []

    def held_up(chunk):
        seen.append(numba.get_num_threads())  # on the scheduler's thread
        holding.set()
        release.wait(60)

    running = Completion(engine.tokenize("hello"), 1, [], GREEDY, held_up)
    scheduler.submit(running)
    assert holding.wait(60)
    given_up, _ = completion(engine, "a b c")
    scheduler.submit(given_up)
    given_up.cancel()  # its client went away while it waited
    assert scheduler.status()["queued"] == 0
    waiting, received = completion(engine, "zzz", max_tokens=2)
    scheduler.submit(waiting)  # not refused: the queue holds no cancelled completion
    release.set()
    assert received.done.wait(60) and seen == [1]
    scheduler.close()
