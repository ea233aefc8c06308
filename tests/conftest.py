import atexit
import os
import shutil
import tempfile
from pathlib import Path

if os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (read at `import triton`)

# the repack cache of the models the tests write lives and dies with the test run: made by the process that starts
# it, inherited by its workers and subprocesses, removed when that process exits (a full run leaves GBs there)
if "HYBRIDINFER_REPACK_CACHE" not in os.environ:
    os.environ["HYBRIDINFER_REPACK_CACHE"] = tempfile.mkdtemp(prefix="hybridinfer-repack-")
    atexit.register(shutil.rmtree, os.environ["HYBRIDINFER_REPACK_CACHE"], ignore_errors=True)

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from hybridinfer.default_model import default_model_path
from hybridinfer.model_file.weight_formats import CPU_NATIVE_TYPES, FORMATS
from logit_checks import N_FF
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """The default SmolLM2-135M GGUF (fetched by `make test`), or $HYBRIDINFER_TEST_MODEL; skip if absent."""
    path = Path(os.environ.get("HYBRIDINFER_TEST_MODEL") or default_model_path())
    if not path.exists():
        pytest.skip(f"default model not present at {path} (run `hybridinfer fetch`)")
    return path


RELU_N_FF = 256


def write_relu_model(folder: Path, weight_type=T.F32) -> Path:
    """The tiny FATReLU model of the sparse-FFN tests: most neurons silent for most tokens (gate bias -8); 256 wide
    for a K-quant (rows of whole 256-blocks), 64 otherwise."""
    n_embd = 256 if FORMATS[weight_type].k_quant else 64
    weights = random_weights(seed=41, n_embd=n_embd, n_ff=RELU_N_FF, gate_bias=-8.0)
    return write_tiny_gguf(folder / f"relu-{weight_type.name}.gguf", weights, weight_type=weight_type,
                           activation="fatrelu", threshold=0.05)


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    """The tiny FATReLU model, F32."""
    return write_relu_model(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module", params=CPU_NATIVE_TYPES, ids=lambda t: t.name)
def relu_model_each_format(request, tmp_path_factory):
    """The tiny FATReLU model in each format the CPU kernels read natively."""
    return write_relu_model(tmp_path_factory.mktemp("m"), request.param)


@pytest.fixture(scope="module")
def silu_model(tmp_path_factory):
    """A tiny SiLU model (the CATS and TEAL tests')."""
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "silu.gguf", random_weights(seed=5, n_ff=N_FF))


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """(calibration text, held-out text): two files of random words (the sparsify tests')."""
    rng = np.random.default_rng(7)
    words = ["the", "model", "sparse", "neuron", "gate", "layer", "token", "of", "a", "runs", "fast", "and"]
    folder = tmp_path_factory.mktemp("t")
    paths = []
    for name in ("calibration.txt", "held_out.txt"):
        path = folder / name
        path.write_text(" ".join(rng.choice(words, 3000)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def threads_restored():
    """For files whose engines run on one CPU thread (the suite runs two files at once on two cores, where numba's
    threads, oversubscribed, wait for each other): the thread counts are restored for the next file."""
    import numba
    import torch
    counts = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(counts[0])
    numba.set_num_threads(counts[1])
