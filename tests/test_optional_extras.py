"""Triton and matplotlib are optional extras (`.[gpu]`, `.[plot]`): without them, what needs them is one line
naming the install, and everything else runs."""

import sys

import pytest

import hybridinfer.gpu

from hybridinfer.errors import HybridInferError
from hybridinfer.gpu import kernels_for
from hybridinfer.plotting import pyplot


def test_triton_kernels_without_triton_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "hybridinfer.gpu.triton_kernels", raising=False)  # imported by other tests
    monkeypatch.delattr(hybridinfer.gpu, "triton_kernels", raising=False)
    with pytest.raises(HybridInferError, match=r"pip install triton .*--gpu-kernels torch"):
        kernels_for("cpu", "triton")
    assert kernels_for("cpu", "torch").__name__ == "hybridinfer.gpu.reference"


def test_plots_without_matplotlib_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(HybridInferError, match=r"--plot needs matplotlib: pip install matplotlib"):
        pyplot()
