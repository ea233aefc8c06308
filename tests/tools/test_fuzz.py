"""A short, seeded fuzzing run (`make fuzz` runs the long one): mutants of the reference model, its predictor
and activations files, and SmolLM2, each given to the CLI in a child process; every run must end in output or
one `error:` line, never a traceback, a hang (10 s, not counting the time a run spends compiling kernels: a fresh
machine compiles the variants a retyped tensor needs) or more than 2 GiB resident."""

import os
import subprocess
import sys
from pathlib import Path

from hybridinfer.default_model import default_model_path

ROOT = Path(__file__).resolve().parents[2]


def test_seeded_mutants_never_crash_hang_or_run_away():
    targets = "tiny,tiny-pred,tiny-act" + (",smollm2" if default_model_path().exists() else "")
    result = subprocess.run(
        [sys.executable, "tools/fuzz.py", "--mutants", "200", "--seed", "13", "--targets", targets, "--jobs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    total = next(line for line in result.stdout.splitlines() if line.startswith("| all |"))
    counts = [int(cell) for cell in total.strip("|").split("|")[1:]]
    mutants, ran, refused, tracebacks, hangs, memory = counts
    assert mutants >= 200 and tracebacks == hangs == memory == 0
    assert ran > 0 and refused > 0  # the mutants exercise both outcomes


def _campaign_outcomes(monkeypatch, tmp_path, work) -> list[str]:
    """Outcomes of two children (a 1 s deadline) each running `work(args)` in place of the CLI."""
    from tools import fuzz
    monkeypatch.setattr(fuzz, "run_cli", work)
    # A forked child starts with this pytest worker's resident pages, which earlier tests in the worker may have
    # grown past 2 GiB: the limit counts from there.
    max_rss = fuzz._rss(os.getpid()) + (2 << 30)
    campaign = fuzz.Campaign(str(tmp_path), timeout=1.0, max_rss=max_rss, jobs=2, compile_timeout=60.0)
    target = fuzz.Target("tiny", fuzz.TINY)
    for index in range(2):
        mutant = tmp_path / f"mutant-{index}"
        mutant.write_bytes(b"")
        campaign.submit(target, index, "kind", str(mutant), [])
    return [run.outcome for run in campaign.finish()]


def test_time_spent_compiling_is_not_a_hang_but_a_stuck_child_is(monkeypatch, tmp_path):
    import time

    import numba
    from numba.core import event

    compiled = numba.njit(lambda: 0)  # the event's dispatcher, which compile_time's progress notes name

    def compiles_for_3_seconds(args):
        event.start_event("numba:compile", data={"dispatcher": compiled})
        time.sleep(3.0)
        event.end_event("numba:compile", data={"dispatcher": compiled})

    assert _campaign_outcomes(monkeypatch, tmp_path, compiles_for_3_seconds) == ["ran", "ran"]
    assert _campaign_outcomes(monkeypatch, tmp_path, lambda args: time.sleep(3.0)) == ["hang", "hang"]
