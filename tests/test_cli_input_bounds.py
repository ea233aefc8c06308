"""Inputs without a bound: -t beyond the cores, prompt and text files that never end (/dev/zero), and model-side
paths that are not regular files (a FIFO blocks its reader forever). Each is one `error:` line and exit status 1
from the CLI, a HybridInferError from the Python API, quickly."""

import logging
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import numba
import pytest
import torch
from click.testing import CliRunner

import hybridinfer
from hybridinfer.text import calibration
from hybridinfer.cli import chat_cmd, perplexity_cmd
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.options import MAX_THREADS, available_cores
from tiny_models import random_weights, write_tiny_gguf

RELU_MODEL = Path(__file__).resolve().parent.parent / "models" / "prosparse-tiny.q8_0.gguf"  # takes every side file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=64)


def refused(*args, input=None, status=1) -> str:
    """Run the CLI in-process; assert one `error:` line, exit `status` (2: click's usage errors), no traceback;
    return the line."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert result.exit_code == status, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def restore_threads():
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


# -t / n_threads

def test_threads_past_any_machine_are_one_line_that_says_what_this_machine_has(tiny):
    cores = available_cores()
    line = refused("generate", "-m", tiny, "-p", "hello", "-n", "1", "-t", 100000)
    assert "-t/--threads 100000" in line and f"{cores} CPU cores" in line and f"-t {cores} or less" in line
    with pytest.raises(HybridInferError, match="CPU cores"):
        hybridinfer.load(str(tiny), n_threads=max(MAX_THREADS, cores) + 1)
    assert "at least 1" in refused("generate", "-m", tiny, "-p", "hello", "-t", 0)


def test_threads_past_the_cores_run_on_the_cores_with_a_warning(tiny, caplog, restore_threads):
    cores = available_cores()
    with caplog.at_level(logging.WARNING):
        hybridinfer.load(str(tiny), n_threads=cores + 1)
    assert torch.get_num_threads() == cores
    assert f"-t/--threads {cores + 1} is more than the {cores} CPU cores" in caplog.text


def test_threads_up_to_the_cores_run_as_asked(tiny, caplog, restore_threads):
    with caplog.at_level(logging.WARNING):
        hybridinfer.load(str(tiny), n_threads=1)
    assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1 and not caplog.text


# prompt and text files

def test_a_prompt_file_that_never_ends_is_refused_at_the_bound(tiny):
    start = time.monotonic()
    line = refused("generate", "-m", tiny, "-f", "/dev/zero", "-n", "1")
    assert "/dev/zero is larger than 32 MiB" in line
    assert time.monotonic() - start < 10


def test_a_prompt_file_reads_as_text_mode_did(tiny, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"the world\r\nof a")
    result = CliRunner().invoke(cli, ["generate", "-m", str(tiny), "-f", str(prompt), "-n", "2", "--temp", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the world\nof a")
    prompt.write_bytes(b"\xff\xfe")
    assert "is not UTF-8 text" in refused("generate", "-m", tiny, "-f", prompt)
    assert "cannot read the prompt file" in refused("generate", "-m", tiny, "-f", tmp_path / "absent.txt")


def test_the_perplexity_text_has_its_own_bound(tiny, monkeypatch):
    monkeypatch.setattr(perplexity_cmd, "MAX_SCORED_TEXT_BYTES", 2**20)  # the real bound, 256 MiB, reads as long
    assert "the text file /dev/zero is larger than 1 MiB" in refused("perplexity", "-m", tiny, "-f", "/dev/zero")


def test_a_corpus_file_has_its_own_bound(tiny, monkeypatch):
    monkeypatch.setattr(calibration, "MAX_CORPUS_BYTES", 2**20)
    line = refused("sparsify", "-m", tiny, "--sparsity", "0.4", "--corpus", "/dev/zero", "-o", os.devnull)
    assert "the corpus file /dev/zero is larger than 1 MiB" in line


def test_a_chat_line_that_never_ends_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(chat_cmd, "MAX_PROMPT_BYTES", 2**20)
    line = refused("chat", "-m", tiny, "-n", "2", input="x" * (2**20 + 10))
    assert "a chat message (one line of input) is longer than 1 Mi characters" in line


# model-side paths that are not regular files

@pytest.fixture
def fifo(tmp_path):
    """A FIFO; should a test open it for reading, a writer comes after 20 s, so that the test fails, not hangs."""
    path = tmp_path / "model.gguf"
    os.mkfifo(path)
    done = threading.Event()

    def unblock():
        if done.wait(20):
            return
        while not done.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader waits
                return
            except OSError:
                time.sleep(0.1)

    threading.Thread(target=unblock, daemon=True).start()
    yield path
    done.set()


@pytest.fixture
def special_files(fifo, tmp_path):
    """One path of each kind that is not a regular file, with the words its error says."""
    folder = tempfile.mkdtemp(prefix="hi-", dir="/tmp")  # a socket's path must be short
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(folder, "s.gguf"))
    yield {"fifo": (fifo, "a FIFO (named pipe)"), "directory": (tmp_path, "is a directory"),
           "device": ("/dev/null", "a character device"), "socket": (os.path.join(folder, "s.gguf"), "a socket")}
    listener.close()
    os.unlink(os.path.join(folder, "s.gguf"))
    os.rmdir(folder)


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket"])
def test_a_model_path_that_is_not_a_regular_file_is_refused_before_it_is_opened(special_files, kind):
    path, words = special_files[kind]
    assert stat.S_ISREG(os.stat(path).st_mode) is False
    assert words in refused("info", path, status=2 if kind == "directory" else 1)  # click refuses a directory
    assert words in refused("generate", "-m", path, "-p", "hello")
    with pytest.raises(HybridInferError, match=words.split("(")[0].strip()):
        hybridinfer.load(path)


@pytest.mark.parametrize("flags", [["--predictors"], ["--sparsity-file"], ["--split"],
                                   ["--vram-budget", "1MiB", "--activations"]])
def test_a_model_side_file_that_is_a_fifo_is_refused(fifo, flags):
    line = refused("generate", "-m", RELU_MODEL, "-p", "hello", "-n", "1", *flags, fifo)
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in line


def test_a_missing_predictor_file_is_one_line():
    assert "file not found: /nonexistent/x.pred.gguf" in refused("generate", "-m", RELU_MODEL, "-p", "hello",
                                                                 "--predictors", "/nonexistent/x.pred.gguf")
