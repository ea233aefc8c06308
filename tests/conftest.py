import os
import tempfile
from pathlib import Path

if os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors (read at `import triton`)

# the repack cache of the models the tests write lives and dies with the test run (subprocesses inherit it)
os.environ.setdefault("HYBRIDINFER_REPACK_CACHE", tempfile.mkdtemp(prefix="hybridinfer-repack-"))

import pytest

from hybridinfer.default_model import default_model_path


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """The default SmolLM2-135M GGUF (fetched by `make test`), or $HYBRIDINFER_TEST_MODEL; skip if absent."""
    path = Path(os.environ.get("HYBRIDINFER_TEST_MODEL") or default_model_path())
    if not path.exists():
        pytest.skip(f"default model not present at {path} (run `hybridinfer fetch`)")
    return path
