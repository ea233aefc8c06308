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


# Which kernels a run of a Q8_0 file has (compiled now or loaded from the cache): the Q8_0 ones, not Q4's
PROBE = """
import json, sys, hybridinfer
from hybridinfer.kernels import variants
engine = hybridinfer.load(sys.argv[1], n_ctx=64, exact=True, warmup=True)
print(json.dumps(sorted(name for name, kernel in variants.made.items() if kernel.signatures)))
"""


def test_a_run_has_only_the_kernels_of_its_formats(tmp_path):
    path = write_tiny_gguf(tmp_path / "q8.gguf", random_weights(seed=3, n_embd=64, n_ff=128), weight_type=T.Q8_0,
                           activation="relu")
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Q8_0 = 3: the int8-activation dot product and the int8 sparse down projection, nothing for Q4_0/Q4_1 (4, 5)
    # or for float32 activations; the blocks for Q8_0 weights, and the entry point of the output projection
    made = json.loads(done.stdout.splitlines()[-1])
    kernels = [name for name in made if name.startswith(("quant_dot.", "cpu_accumulate_int8.", "quant_accumulate."))]
    assert kernels == ["cpu_accumulate_int8.int8_accumulate.3", "quant_dot.dot_rows.3_False"]
    assert "cpu_layer.attention_block.3_3_False" in made and "cpu_layer.sparse_ffn_block.3_3_3_False" in made
    assert not any("_True" in name or ".4" in name or ".5" in name for name in made)


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
