"""Kernel compilation: counted on its own (never inside load or prompt times), announced by the CLI, and limited
to the kernels of the formats a run reads."""

import json
import subprocess
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from numba import njit

from hybridinfer.kernels import compile_time
from tiny_models import random_weights, write_tiny_gguf


def test_stopwatch_separates_compilation_from_work():
    offset = float(np.random.default_rng(7).integers(1, 1000))  # a body numba has not compiled in this process

    @njit(cache=False)
    def scaled_sum(x):
        return (x * offset).sum()

    before = compile_time.seconds()
    with compile_time.Stopwatch() as first:
        scaled_sum(np.arange(4.0))
    assert compile_time.seconds() > before and first.compile_ms > 0
    with compile_time.Stopwatch() as second:
        scaled_sum(np.arange(4.0))
    assert second.compile_ms == 0 and second.ms >= 0


# Which variants a run of a Q8_0 file makes (each then compiled, or loaded from the cache): Q8_0's, not Q4's
PROBE = """
import json, sys, hybridinfer
from hybridinfer.kernels import variants
engine = hybridinfer.load(sys.argv[1], n_ctx=64, exact=True, warmup=True)
print(json.dumps(sorted(variants.made)))
"""


def test_a_run_has_only_the_kernels_of_its_formats(tmp_path):
    path = write_tiny_gguf(tmp_path / "q8.gguf", random_weights(seed=3, n_embd=64, n_ff=128), weight_type=T.Q8_0,
                           activation="relu")
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Q8_0 = 3: blocks and entry points for Q8_0 weights and int8 activations only (their kernels are chosen from
    # these codes when they compile), none for Q4_0/Q4_1 (4, 5) or float32 activations
    made = json.loads(done.stdout.splitlines()[-1])
    assert "cpu_layer.attention_block.3_3_False" in made and "cpu_layer.sparse_ffn_block.3_3_3_False" in made
    assert "cpu_quant._dense_kernel.3_False" in made  # the output projection, from Python
    assert not any(name.endswith("True") or ".4" in name or ".5" in name for name in made), made


def test_the_cli_reports_compilation_on_its_own_line(tmp_path):
    path = write_tiny_gguf(tmp_path / "f32.gguf", random_weights(seed=4))
    done = subprocess.run([sys.executable, "-m", "hybridinfer", "generate", "-m", str(path), "-p", "hi", "-n", "2",
                           "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    timings = json.loads(done.stdout)["timings"]
    assert timings["compile_ms"] >= 0 and timings["load_ms"] > 0 and timings["prompt_ms"] > 0
    done = subprocess.run([sys.executable, "-m", "hybridinfer", "generate", "-m", str(path), "-p", "hi", "-n", "2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "compile time =" in done.stderr and "prompt eval time =" in done.stderr


def test_warmup_compiles_and_packs_once(tmp_path):
    path = write_tiny_gguf(tmp_path / "q8.gguf", random_weights(seed=5), weight_type=T.Q8_0)
    said = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "hybridinfer", "warmup", "-m", str(path)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        said.append(done.stderr.strip().splitlines()[-1])
    assert said[0].endswith("weights packed")
    assert "every kernel was already compiled" in said[1] and said[1].endswith("mapped from the repack cache")
