"""CLI smoke tests: generate (text and --json), info, and one-line errors without tracebacks."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hybridinfer.cli.main import cli
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", random_weights(seed=31), context_length=64)


def run(*args):
    return subprocess.run([sys.executable, "-m", "hybridinfer", *map(str, args)], capture_output=True, text=True)


def test_generate_streams_text_and_prints_timings(tiny):
    result = CliRunner().invoke(cli, ["generate", "-m", str(tiny), "-p", "hello", "-n", "5", "--temp", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("hello")
    assert "prompt eval time" in result.stderr and "tokens per second" in result.stderr


def test_generate_json(tiny):
    result = CliRunner().invoke(cli, ["generate", "-m", str(tiny), "-p", "the world", "-n", "4", "--temp", "0", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record) >= {"text", "tokens", "timings"}
    assert set(record["timings"]) >= {"load_ms", "prompt_ms", "prompt_tokens", "prompt_tps", "eval_ms",
                                      "eval_tokens", "eval_tps"}
    assert 1 <= len(record["tokens"]) <= 4


def test_info_json(tiny):
    result = CliRunner().invoke(cli, ["info", str(tiny), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["architecture"] == "llama" and summary["ffn_activation"] == "silu"
    assert summary["tokenizer"] == "llama" and summary["weight_types"]["F32"]["tensors"] > 0


def test_chat_reads_turns_from_stdin(tiny):
    result = CliRunner().invoke(cli, ["chat", "-m", str(tiny), "-n", "3", "--temp", "0"], input="hello\n/clear\nthe\n/bye\n")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args,needle", [
    (["generate", "-m", "/nonexistent/model.gguf", "-p", "hi"], "not found"),
    (["info", "{notgguf}"], "not a GGUF file"),
    (["generate", "-m", "{tiny}", "-p", "hello " * 80], "longer than the context size"),
    (["generate", "-m", "{tiny}", "-p", "hi", "--top-p", "2"], "--top-p"),
    (["generate", "-m", "{tiny}"], "no prompt"),
])
def test_errors_are_one_line_without_traceback(tiny, tmp_path, args, needle):
    notgguf = tmp_path / "x.gguf"
    notgguf.write_text("plain text")
    args = [a.replace("{tiny}", str(tiny)).replace("{notgguf}", str(notgguf)) for a in args]
    done = run(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], done.stderr


def test_bench_json(tiny):
    result = CliRunner().invoke(cli, ["bench", "-m", str(tiny), "-p", "8", "-n", "4", "-r", "1", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["mode"] == "dense" and [r["test"] for r in record["results"]] == ["pp8", "tg4"]
    assert record["backend"] == "packed" and record["llama_cpp"] is None
    assert all(r["tokens_per_second"] > 0 for r in record["results"])


def test_bench_kernels_refuses_an_unknown_format_in_one_line():
    done = run("bench", "--kernels", "--formats", "q4_0,q2_k")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "q2_k" in lines[0], done.stderr


@pytest.mark.parametrize("extra, message", [(["--formats", "q4_0,q9"], "q9"), ([], "no CUDA GPU is visible")])
def test_bench_gpu_kernels_without_a_gpu_or_with_an_unknown_format_says_so_in_one_line(extra, message):
    import torch
    if message.startswith("no CUDA") and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here: the benchmark would run")
    done = run("bench", "--kernels", "--device", "cuda", *extra)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and message in lines[0], done.stderr


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_an_interrupt_in_a_constructor_prints_no_finalizer_traceback(sig, code):
    """As tqdm's progress bar does when a conversion is stopped while it builds one: its finalizer then fails."""
    script = f"""
import os, signal, sys
from hybridinfer.cli.main import _sigterm_unwinds

class HalfBuilt:
    def __init__(self):
        os.kill(os.getpid(), signal.{sig})  # the interrupt arrives mid-constructor
        self.pos = 0

    def __del__(self):
        self.pos  # AttributeError: the constructor never got here

try:
    with _sigterm_unwinds():
        HalfBuilt()
except KeyboardInterrupt:
    sys.exit(130)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, \
        done.stderr
