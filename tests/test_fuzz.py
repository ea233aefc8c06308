"""A short, seeded fuzzing run (`make fuzz` runs the long one): mutants of the reference model, its predictor
and activations files, and SmolLM2, each given to the CLI in a child process; every run must end in output or
one `error:` line, never a traceback, a hang (10 s) or more than 2 GiB resident."""

import os
import subprocess
import sys
from pathlib import Path

from hybridinfer.default_model import default_model_path

ROOT = Path(__file__).resolve().parent.parent


def test_seeded_mutants_never_crash_hang_or_run_away():
    targets = "tiny,tiny-pred,tiny-act" + (",smollm2" if default_model_path().exists() else "")
    result = subprocess.run(
        [sys.executable, "tools/fuzz.py", "--mutants", "200", "--seed", "13", "--targets", targets, "--jobs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    total = next(line for line in result.stdout.splitlines() if line.startswith("| all |"))
    counts = [int(cell) for cell in total.strip("|").split("|")[1:]]
    mutants, ran, refused, tracebacks, hangs, memory = counts
    assert mutants >= 200 and tracebacks == hangs == memory == 0
    assert ran > 0 and refused > 0  # the mutants exercise both outcomes
