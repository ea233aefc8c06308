"""The Python API's arguments of the wrong type: one HybridInferError or TypeError (ArgumentTypeError is both) whose
one-line message names the argument, raised at the API's boundary rather than from deep inside; valid calls,
numpy integers and path objects among them, work as before."""

from pathlib import Path

import numpy as np
import pytest

import hybridinfer
from hybridinfer.errors import ArgumentTypeError, HybridInferError
from hybridinfer.options import RunOptions
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=21), context_length=128)


@pytest.fixture(scope="module")
def engine(model):
    return hybridinfer.load(str(model), n_ctx=64)


def refused(call, name: str) -> Exception:
    with pytest.raises((HybridInferError, TypeError)) as info:
        call()
    message = str(info.value)
    assert name in message and "\n" not in message, message
    return info.value


@pytest.mark.parametrize("fields,name", [
    ({"n_ctx": "16"}, "n_ctx"), ({"n_ctx": 16.0}, "n_ctx"), ({"n_threads": True}, "n_threads"),
    ({"n_threads": "2"}, "n_threads"), ({"exact": 1}, "exact"), ({"warmup": "yes"}, "warmup"),
    ({"predictors": 5}, "predictors"), ({"sparsity_file": b"x.gguf"}, "sparsity_file"),
    ({"sparsity": "50"}, "sparsity"),
    ({"backend": 1}, "backend"), ({"n_gpu_layers": 1.5}, "n_gpu_layers"), ({"vram_budget": 2**30}, "vram_budget"),
    ({"n_tokens": 5}, "n_tokens"), ({"options": "fast"}, "options"),
])
def test_load_names_the_option_of_the_wrong_type(model, fields, name):
    error = refused(lambda: hybridinfer.load(str(model), **fields), name)
    assert isinstance(error, ArgumentTypeError) and isinstance(error, TypeError)


@pytest.mark.parametrize("path", [None, 5, b"/tmp/model.gguf"])
def test_load_names_a_path_of_the_wrong_type(path):
    refused(lambda: hybridinfer.load(path), "path")


@pytest.mark.parametrize("call,name", [
    (lambda e: e.generate(None), "prompt"),
    (lambda e: e.generate(5), "prompt"),
    (lambda e: e.generate([1, "a"]), "prompt"),
    (lambda e: e.generate([1, 2.5]), "prompt"),
    (lambda e: e.generate([[1, 2]]), "prompt"),
    (lambda e: e.generate("x", stop=5), "stop"),
    (lambda e: e.generate("x", stop=["a", None]), "stop"),
    (lambda e: e.generate("x", max_tokens="3"), "max_tokens"),
    (lambda e: e.generate("x", max_tokens=True), "max_tokens"),
    (lambda e: e.generate("x", temperature="hot"), "temp"),
    (lambda e: e.generate("x", seed=1.5), "seed"),
    (lambda e: e.generate("x", top_k="40"), "top-k"),
    (lambda e: e.generate("x", temprature=0), "temprature"),
    (lambda e: e.stream(None), "prompt"),
    (lambda e: e.stream("x", stop=5), "stop"),
    (lambda e: e.logits(None), "token_ids"),
    (lambda e: e.logits("hello"), "token_ids"),
    (lambda e: e.tokenize(None), "text"),
    (lambda e: e.tokenize("x", add_bos="yes"), "add_bos"),
    (lambda e: e.detokenize(None), "ids"),
    (lambda e: e.hold_sequences("2"), "n"),
])
def test_engine_calls_name_the_argument_of_the_wrong_type(engine, call, name):
    refused(lambda: call(engine), name)


def test_stream_refuses_bad_arguments_before_anything_is_generated(engine):
    with pytest.raises(ArgumentTypeError, match="max_tokens"):
        engine.stream("x", max_tokens="3")  # not at the first next()


def test_numpy_integers_paths_and_tuples_are_accepted(engine, model):
    ids = engine.tokenize("the world")
    expected = engine.generate(ids, max_tokens=4, temperature=0)
    same = engine.generate(np.array(ids), max_tokens=np.int32(4), temperature=np.float32(0), seed=np.int64(3))
    assert same.tokens == expected.tokens
    assert engine.generate(tuple(ids), max_tokens=4, temperature=0, stop=()).tokens == expected.tokens
    np.testing.assert_array_equal(engine.logits(np.array(ids)), engine.logits(ids))
    loaded = hybridinfer.load(model, n_ctx=np.int64(64), exact=np.bool_(False))
    assert loaded.n_ctx == 64 and isinstance(loaded.options.n_ctx, int) and loaded.path == str(model)
    assert RunOptions(predictors=Path("/x.pred.gguf")).predictors == "/x.pred.gguf"


def test_one_stop_string_is_one_stop_string_not_its_characters(engine):
    text = engine.generate("the world", max_tokens=8, temperature=0).text
    absent = text[0] + "\u2603"  # its first character opens the text, but the string is nowhere
    assert engine.generate("the world", max_tokens=8, temperature=0, stop=absent).text == text
    present = text[2:4]
    stopped = engine.generate("the world", max_tokens=8, temperature=0, stop=present)
    assert stopped.text == text[:text.index(present)] and stopped.finish_reason == "stop"
