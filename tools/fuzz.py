"""`make fuzz`: run the command line on N mutated model files and count the outcomes.

Each mutant (`tools/gguf_mutants.py`) is written to a temporary file and given to `hybridinfer generate` (or
`chat`, half the time), in a child process forked from this warmed-up one (imports done, kernels compiled), so
a run costs what the command itself costs. A run ends as one of:
    ran        exit 0
    refused    exit 1 with exactly one `error:` line on stderr and no traceback
    traceback  a Python traceback, any other exit status, or a signal (a crash)
    hang       still running after --timeout seconds, not counting the time it spent compiling kernels (killed);
               a child compiling for longer than --compile-timeout counts as a hang too
    memory     resident memory above --max-rss (killed)
Targets: the default model (SmolLM2), the reference model, its predictor file and its activations file (the
last two mutated while the model stays intact). Each mutant is a pure function of (--seed, target, index):
`--only TARGET:INDEX` runs one again, and `--keep DIR` keeps the stderr of every failure.

    python tools/fuzz.py --mutants 10000 --seed 1
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import mmap
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

# GNU OpenMP, numba's default threading layer here, aborts a forked child; its work queue is fork-safe
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numpy as np  # noqa: E402

from tools.gguf_mutants import Layout, mutate  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "prosparse-tiny.q8_0.gguf"
TINY_PRED = ROOT / "models" / "prosparse-tiny.pred.gguf"
TINY_ACT = ROOT / "models" / "prosparse-tiny.act.gguf"
OUTCOMES = ("ran", "refused", "traceback", "hang", "memory")
COMMON = ["-n", "2", "--temp", "0", "-t", "1", "-c", "64"]


@dataclass(frozen=True)
class Target:
    name: str
    mutated: Path  # the file that is mutated

    def command(self, mutant: str, chat: bool) -> list[str]:
        """The CLI arguments running `mutant` in place of the mutated file."""
        if self.name == "tiny-pred":
            return ["generate", "-m", str(TINY), "-p", "Return the number of", "--predictors", mutant] + COMMON
        if self.name == "tiny-act":
            return ["generate", "-m", str(TINY), "-p", "Return the number of", "--predictors", str(TINY_PRED),
                    "--vram-budget", "69MiB", "--activations", mutant] + COMMON
        if chat:
            return ["chat", "-m", mutant] + COMMON
        return ["generate", "-m", mutant, "-p", "The capital of France is"] + COMMON


def targets() -> dict[str, Target]:
    from hybridinfer.default_model import default_model_path
    return {"smollm2": Target("smollm2", default_model_path()), "tiny": Target("tiny", TINY),
            "tiny-pred": Target("tiny-pred", TINY_PRED), "tiny-act": Target("tiny-act", TINY_ACT)}


class CompileClocks:
    """Per running child, in memory shared with it: seconds it spent compiling numba kernels, and since when it
    has been compiling (0: not now). The deadline counts the rest: a child that must compile a kernel variant the
    warm-up did not (a retyped tensor) is not a hang, however busy the machine."""

    SLOT = struct.Struct("dd")

    def __init__(self, slots: int):
        self.memory = mmap.mmap(-1, self.SLOT.size * slots)

    def read(self, slot: int) -> tuple[float, float]:
        return self.SLOT.unpack_from(self.memory, slot * self.SLOT.size)

    def write(self, slot: int, done: float, since: float) -> None:
        self.SLOT.pack_into(self.memory, slot * self.SLOT.size, done, since)

    def compiling_seconds(self, slot: int) -> tuple[float, float]:
        """(seconds spent compiling so far, seconds of the compilation under way)."""
        done, since = self.read(slot)
        return done, (time.monotonic() - since if since else 0.0)

    def listen_in_child(self, slot: int) -> None:
        """Keep this child's slot up to date from numba's compile events (outermost compilations only)."""
        from numba.core import event
        clocks, state = self, {"depth": 0, "done": 0.0, "since": 0.0}

        class Listener(event.Listener):
            def on_start(self, ev):
                if state["depth"] == 0:
                    state["since"] = time.monotonic()
                    clocks.write(slot, state["done"], state["since"])
                state["depth"] += 1

            def on_end(self, ev):
                state["depth"] -= 1
                if state["depth"] == 0:
                    state["done"] += time.monotonic() - state["since"]
                    clocks.write(slot, state["done"], 0.0)

        self.write(slot, 0.0, 0.0)
        event.register("numba:compile", Listener())


def run_cli(args: list[str]) -> None:
    from hybridinfer.cli.main import cli
    cli.main(args=args, prog_name="hybridinfer", standalone_mode=True)


def _child(args: list[str], stderr_path: str, clocks: CompileClocks, slot: int) -> None:
    """In the forked child: run the CLI as `hybridinfer ARGS` would, stdin holding one chat line."""
    code = 3
    try:
        clocks.listen_in_child(slot)
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.stdin = io.StringIO("Hello\n")
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        logging.root.handlers = []  # the warm-up's handler wrote to a stream that is gone; cli() makes a new one
        run_cli(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: B036 - a fuzzing child reports everything
        traceback.print_exc()
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Run:
    target: str
    index: int
    kind: str
    outcome: str
    seconds: float
    peak_rss: int
    stderr: str


def classify(status: int, stderr: str) -> str:
    if os.WIFSIGNALED(status) or "Traceback" in stderr:
        return "traceback"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return "ran"
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    return "refused" if code == 1 and len(error_lines) == 1 and stderr.strip().splitlines()[-1].startswith("error:") \
        else "traceback"


class Campaign:
    """Forks one child per mutant, `jobs` at a time, watching each for time and memory."""

    def __init__(self, workdir: str, timeout: float, max_rss: int, jobs: int, compile_timeout: float):
        self.workdir, self.timeout, self.max_rss, self.jobs = workdir, timeout, max_rss, jobs
        self.compile_timeout = compile_timeout
        self.clocks = CompileClocks(jobs)
        self.running: dict[int, tuple] = {}
        self.results: list[Run] = []

    def submit(self, target: Target, index: int, kind: str, mutant_path: str, args: list[str]) -> None:
        while len(self.running) >= self.jobs:
            self._poll()
        stderr_path = mutant_path + ".stderr"
        slot = min(set(range(self.jobs)) - {run[-1] for run in self.running.values()})
        self.clocks.write(slot, 0.0, 0.0)
        pid = os.fork()
        if pid == 0:
            _child(args, stderr_path, self.clocks, slot)
        self.running[pid] = (target.name, index, kind, mutant_path, stderr_path, time.monotonic(), 0, slot)

    def finish(self) -> list[Run]:
        while self.running:
            self._poll()
        return self.results

    def _poll(self) -> None:
        time.sleep(0.01)
        for pid, (target, index, kind, mutant, stderr_path, start, peak, slot) in list(self.running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            killed = None
            if not done:
                peak = max(peak, _rss(pid))
                compiled, compiling = self.clocks.compiling_seconds(slot)
                if peak > self.max_rss:
                    killed = "memory"
                elif time.monotonic() - start - compiled - compiling > self.timeout or \
                        compiled + compiling > self.compile_timeout:
                    killed = "hang"
                if killed is None:
                    self.running[pid] = (target, index, kind, mutant, stderr_path, start, peak, slot)
                    continue
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            stderr = Path(stderr_path).read_text(errors="replace") if os.path.exists(stderr_path) else ""
            outcome = killed or classify(status, stderr)
            self.results.append(Run(target, index, kind, outcome, time.monotonic() - start, peak, stderr))
            del self.running[pid]
            for path in (mutant, stderr_path):
                if os.path.exists(path):
                    os.unlink(path)


def mutant_rng(seed: int, target: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, sum(map(ord, target)), index])


def warm_up() -> None:
    """Run each pristine target once in this process: imports done and kernels compiled, forked children start warm."""
    import contextlib

    from hybridinfer.cli.main import cli
    for target in targets().values():
        if not target.mutated.exists():
            continue
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                cli.main(args=target.command(str(target.mutated), chat=False), prog_name="hybridinfer",
                         standalone_mode=False)
            except SystemExit:
                pass


def run(names: list[str], n_mutants: int, seed: int, timeout: float, max_rss: int, jobs: int,
        only: tuple[str, int] | None = None, workdir: str | None = None, compile_timeout: float = 600.0) -> list[Run]:
    """Fuzz each named target with `n_mutants` mutants (split evenly), returning every run."""
    all_targets = targets()
    chosen = [all_targets[n] for n in names if all_targets[n].mutated.exists()]
    base = workdir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    scratch = tempfile.mkdtemp(prefix="hybridinfer-fuzz-", dir=base)
    try:
        started = time.monotonic()
        warm_up()
        print(f"warmed up in {time.monotonic() - started:.0f} s", file=sys.stderr)
        campaign = Campaign(scratch, timeout, max_rss, jobs, compile_timeout)
        layouts = {t.name: Layout.of(str(t.mutated)) for t in chosen}
        per_target = -(-n_mutants // max(1, len(chosen)))
        work = [(only[0], only[1])] if only else [(t.name, i) for i in range(per_target) for t in chosen]
        for name, index in work:
            target = all_targets[name]
            rng = mutant_rng(seed, name, index)
            mutant = mutate(layouts[name], rng)
            path = os.path.join(scratch, f"{name}-{index}.gguf")
            mutant.write(path)
            campaign.submit(target, index, mutant.kind, path, target.command(path, chat=bool(rng.random() < 0.5)))
        return campaign.finish()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def table(runs: list[Run], key) -> str:
    groups: dict[str, Counter] = defaultdict(Counter)
    for r in runs:
        groups[key(r)][r.outcome] += 1
    lines = ["| " + " | ".join(["", "mutants", *OUTCOMES]) + " |", "|" + "---|" * (len(OUTCOMES) + 2)]
    for name in sorted(groups):
        counts = groups[name]
        lines.append(f"| {name} | {sum(counts.values())} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    total = Counter(r.outcome for r in runs)
    lines.append(f"| all | {len(runs)} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--targets", default="smollm2,tiny,tiny-pred,tiny-act")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds before a run counts as a hang, the time it spends compiling kernels aside")
    parser.add_argument("--compile-timeout", type=float, default=600.0,
                        help="seconds of kernel compilation before a run counts as a hang")
    parser.add_argument("--max-rss", type=float, default=2.0, help="GiB of resident memory a run may use")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", default=None, help="TARGET:INDEX: run one mutant again")
    parser.add_argument("--keep", default=None, help="directory for the stderr of every failed run")
    opts = parser.parse_args()
    only = (opts.only.split(":")[0], int(opts.only.split(":")[1])) if opts.only else None
    start = time.monotonic()
    runs = run(opts.targets.split(","), opts.mutants, opts.seed, opts.timeout, int(opts.max_rss * 2**30), opts.jobs,
               only, compile_timeout=opts.compile_timeout)
    failures = [r for r in runs if r.outcome not in ("ran", "refused")]
    print(f"{len(runs)} mutants, seed {opts.seed}, {time.monotonic() - start:.0f} s, timeout {opts.timeout:g} s, "
          f"memory limit {opts.max_rss:g} GiB, peak RSS {max((r.peak_rss for r in runs), default=0) / 2**20:.0f} MiB\n")
    print(table(runs, lambda r: r.target) + "\n")
    print(table(runs, lambda r: r.kind))
    if opts.keep:
        os.makedirs(opts.keep, exist_ok=True)
        for r in failures:
            Path(opts.keep, f"{r.target}-{r.index}.txt").write_text(
                json.dumps({"target": r.target, "index": r.index, "kind": r.kind, "outcome": r.outcome}) + "\n" +
                r.stderr)
    for r in failures[:20]:
        last = (r.stderr.strip().splitlines() or [""])[-1][:160]
        print(f"{r.outcome}: --only {r.target}:{r.index} ({r.kind}): {last}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
