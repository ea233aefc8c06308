"""Write an output file completely or not at all: a temporary file beside the destination, renamed over it
only when complete, removed on any error or interrupt (SIGTERM too: hybridinfer/cli/main.py turns it into
SystemExit, so the cleanup below runs)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import HybridInferError


def check_destination(path: str | os.PathLike) -> None:
    """Refuse, before any work is done, a destination that cannot be written: a directory, or a parent
    directory that is missing, not a directory, or not writable."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise HybridInferError(f"{path} is a directory; give the path of the file to write")
    if not parent.exists():
        raise HybridInferError(f"the output directory {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise HybridInferError(f"{parent} is not a directory, so {path} cannot be written; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HybridInferError(f"the output directory {parent} is not writable; choose another path")


def create_empty(path: str) -> None:
    """Create `path` empty, readable by its owner alone until it is complete; an existing file is an error."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path to write; on success it becomes `path` (with the usual 0666 & ~umask mode). The
    temporary name is chosen before the file is created, inside the block that removes it: an interrupt at any
    point leaves nothing behind."""
    path = Path(path)
    check_destination(path)
    partial = str(path.parent / f".{path.name}.{secrets.token_hex(8)}.partial")
    try:
        try:
            create_empty(partial)
        except OSError as exc:
            raise HybridInferError(f"cannot create a file in {path.parent}: {exc.strerror}; choose another path") \
                from None
        yield partial
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
