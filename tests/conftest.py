import os
import tempfile
from pathlib import Path

if os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (read at `import triton`)

# the repack cache of the models the tests write lives and dies with the test run (subprocesses inherit it)
os.environ.setdefault("HYBRIDINFER_REPACK_CACHE", tempfile.mkdtemp(prefix="hybridinfer-repack-"))

import numpy as np
import pytest

from hybridinfer.default_model import default_model_path
from logit_checks import N_FF
from tiny_models import random_weights, write_tiny_gguf


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """The default SmolLM2-135M GGUF (fetched by `make test`), or $HYBRIDINFER_TEST_MODEL; skip if absent."""
    path = Path(os.environ.get("HYBRIDINFER_TEST_MODEL") or default_model_path())
    if not path.exists():
        pytest.skip(f"default model not present at {path} (run `hybridinfer fetch`)")
    return path


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
