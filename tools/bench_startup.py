"""`make bench`'s start-up section: a new process's path to its first token, as a user meets it.

Per model, `hybridinfer generate -n 1 --json` runs twice in fresh processes with an empty repack cache: the first
start repacks and writes the cache, the second maps it. Each row gives the process's wall time (start to exit,
one token generated), the engine's start-up breakdown (open, predictors, weights, warmup, compile) and the peak
resident set (anonymous and file-backed pages, getrusage), next to the model and predictor files' size.

Usage: PYTHONPATH=. python tools/bench_startup.py MODEL [PREDICTORS]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_once(model: Path, predictors: Path | None, cache: str) -> dict:
    command = [sys.executable, "-m", "hybridinfer", "generate", "-m", str(model), "-p", "Hello", "-n", "1",
               "--temp", "0", "--json"]  # the default -c: the KV cache's pages become resident as used
    if predictors is not None:
        command += ["--predictors", str(predictors)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HYBRIDINFER_REPACK_CACHE": cache})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}")
    return {"wall_s": wall, **json.loads(done.stdout)["startup"]}


def section(label: str, model: Path, predictors: Path | None = None) -> None:
    files = model.stat().st_size + (predictors.stat().st_size if predictors is not None else 0)
    mode = "--predictors" if predictors is not None else "dense"
    with tempfile.TemporaryDirectory(prefix="repack-") as cache:
        for start in ("first (repacks)", "second (maps)"):
            s = start_once(model, predictors, cache)
            stages = ", ".join(f"{key[:-3]} {s[key] / 1000:.2f}" for key in
                               ("open_ms", "predictors_ms", "weights_ms", "warmup_ms", "compile_ms") if key in s)
            print(f"| {label} | {mode} | {start} | {s['wall_s']:.2f} | {stages} | "
                  f"{s['peak_rss_bytes'] / 2**30:.2f} | {files / 2**30:.2f} |", flush=True)


def header() -> None:
    print("\n## start-up: a new process to its first token (`generate -n 1`, the default -c)\n\n"
          "| model | mode | start | wall s | stages (s) | peak RSS GiB | files GiB |\n"
          "| --- | --- | --- | ---: | --- | ---: | ---: |", flush=True)


if __name__ == "__main__":
    header()
    section(Path(sys.argv[1]).name, Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
