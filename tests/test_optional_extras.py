"""Triton and matplotlib are optional extras (`.[gpu]`, `.[plot]`): without them, what needs them is one line
naming the install, and everything else runs."""

import sys
from types import ModuleType

import pytest

import hybridinfer.gpu

from hybridinfer.errors import HybridInferError
from hybridinfer.gpu import kernels_for
from hybridinfer.plotting import pyplot


def imported_with_triton() -> list[str]:
    """The modules of hybridinfer.gpu that hold a triton module: imported (by other tests) while triton was there."""
    return [name for name, module in list(sys.modules.items())
            if name.startswith("hybridinfer.gpu.") and module is not None
            and any(isinstance(value, ModuleType) and value.__name__.split(".")[0] == "triton"
                    for value in vars(module).values())]


def test_triton_kernels_without_triton_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now fails as if it were not installed
    # imported by other tests: the kernel set's face, and the modules behind it (they import triton themselves)
    for name in ["hybridinfer.gpu.triton_kernels", *imported_with_triton()]:
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(hybridinfer.gpu, name.rsplit(".", 1)[1], raising=False)
    with pytest.raises(HybridInferError, match=r"pip install triton .*--gpu-kernels torch"):
        kernels_for("cpu", "triton")
    assert kernels_for("cpu", "torch").__name__ == "hybridinfer.gpu.reference"


def test_plots_without_matplotlib_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(HybridInferError, match=r"--plot needs matplotlib: pip install matplotlib"):
        pyplot()
