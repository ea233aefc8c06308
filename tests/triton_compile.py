"""The compile tests' shared steps: skip, saying why, where this Triton cannot compile for NVIDIA, and run one of
the package's compile tools (`hybridinfer.gpu.compile_check`, `compile_step_kernels`) as Triton compiles, not
interpreted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def skip_without_nvidia_tools(*tools: str) -> None:
    """Skip where this triton install's NVIDIA backend lacks `tools` (ptxas compiles, cuobjdump disassembles)."""
    triton = pytest.importorskip("triton", reason="the Triton kernels need triton")
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    missing = [tool for tool in tools if not (bin_dir / tool).exists()]
    if missing:
        pytest.skip(f"this triton install has no NVIDIA backend tools {', '.join(missing)} to compile with")


def run_compile_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m hybridinfer.gpu.MODULE ARGS` with TRITON_INTERPRET unset, from the repository root."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", f"hybridinfer.gpu.{module}", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
