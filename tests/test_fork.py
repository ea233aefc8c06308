"""A program that imports the package (or loads a model) and then forks, as Python's `multiprocessing` does on
Linux and pre-forking servers do: the child loads a model and generates. numba's threading layer starts at the
first kernel, not at import (`kernels/threads.py`); a child forked after its parent ran GNU OpenMP, which dies in
such a child, gets a one-line error that says what to do instead of a SIGTERM, and doing it works. The program's
torch runs a parallel loop (GNU OpenMP threads, whatever numba's layer) before each load, as a user's program may
and as torch's vector math did inside a load on an AMD CPU: a forked child's first such loop must not hang."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "prosparse-tiny.q8_0.gguf"

# the parent: import (and with LOAD_FIRST, load and generate), fork, and in the child load and generate
PROGRAM = textwrap.dedent("""
    import os, sys
    import torch
    import hybridinfer
    from numba.np.ufunc import parallel
    print("threads started at import:", parallel._is_initialized, flush=True)
    def run():
        torch.rand(1 << 22).exp_()  # above ATen's grain: a parallel loop on torch's OpenMP threads
        engine = hybridinfer.load(sys.argv[1], n_ctx=64)
        return engine.generate("Return the number of", max_tokens=6, temperature=0).text
    parent_text = run() if sys.argv[2] == "1" else None
    pid = os.fork()
    if pid == 0:
        try:
            text = run()
            os._exit(0 if (parent_text is None and text) or text == parent_text else 2)
        except hybridinfer.HybridInferError as exc:
            print("error:", exc, flush=True)
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    print("child:", "signal" if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
""")


def run_forking(load_first: bool, layer: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(TINY), "1" if load_first else "0"],
                            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_starts_no_thread_pool_and_a_child_forked_after_import_generates():
    out = run_forking(load_first=False)
    assert "threads started at import: False" in out
    assert "child: 0" in out, out


def test_a_child_forked_after_its_parent_generated_on_a_fork_safe_layer_generates_the_same_text():
    out = run_forking(load_first=True, layer="workqueue")  # what the error below tells a user to do
    assert "child: 0" in out, out


def test_a_child_forked_after_gnu_openmp_ran_gets_a_one_line_error_not_a_signal():
    try:
        from numba.np.ufunc import omppool
    except ImportError:
        pytest.skip("this numba has no OpenMP threading layer")
    if getattr(omppool, "openmp_vendor", "GNU") != "GNU":
        pytest.skip(f"numba's OpenMP here is {omppool.openmp_vendor}'s, which survives a fork")
    out = run_forking(load_first=True, layer="omp")
    assert "child: 4" in out and "error: this process was forked" in out, out
