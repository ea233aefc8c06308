"""lm-evaluation-harness against `hybridinfer serve`: a small multiple-choice task written here (no download),
scored by `lm_eval --model local-completions` for the dense model and each sparse mode, accuracies side by side.

    PYTHONPATH=. .venv/bin/python tools/lm_eval_recipe.py [-m MODEL] [--modes dense,cats,teal] [--sparsity 0.4]

(`make eval` runs it on the default model.) For each mode it starts `hybridinfer serve` on a free port, runs

    lm_eval --model local-completions --tasks hybridinfer_mc --include_path TASK_DIR \\
        --model_args base_url=http://127.0.0.1:PORT/v1/completions,model=NAME,tokenizer_backend=remote,...

with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 (the task's data are a local JSON-lines file; the tokenizer is
the server's, through /tokenizer_info, /tokenize and /detokenize), reads lm_eval's results file and stops the
server. A missing sparsity file is made first by `hybridinfer sparsify`. docs/evaluation.md explains the task and
gives measured figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TASK = "hybridinfer_mc"
START_TIMEOUT_S = 600  # a first start on a fresh machine compiles the CPU kernels

# Questions by kind: (prompt, answer); the other answers of the same kind are the distractors.
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
_KINDS = {
    "days": [(f"Days of the week: {', '.join(_DAYS[i:i + 3])},", _DAYS[(i + 3) % 7]) for i in range(7)],
    "months": [(f"Months of the year: {', '.join(_MONTHS[i:i + 3])},", _MONTHS[i + 3]) for i in range(9)],
    "numbers": [(f"Counting: {', '.join(_NUMBERS[i:i + 3])},", _NUMBERS[i + 3]) for i in range(8)],
    "capitals": [(f"The capital of {country} is", city) for country, city in [
        ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
        ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("China", "Beijing"),
        ("Greece", "Athens")]],
    "opposites": [(f"The opposite of {word} is", other) for word, other in [
        ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"), ("happy", "sad"),
        ("open", "closed"), ("light", "dark"), ("old", "young"), ("left", "right")]],
    "colors": [(f"The color of {thing} is", color) for thing, color in [
        ("the clear sky", "blue"), ("fresh grass", "green"), ("snow", "white"), ("a ripe banana", "yellow"),
        ("blood", "red"), ("coal", "black")]],
    "plurals": [(f"One {one}, two", many) for one, many in [
        ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("man", "men"),
        ("goose", "geese")]],
}


def questions(seed: int = 35) -> list[dict]:
    """The task's documents: {"question", "choices" (4), "answer" (the right one's index), "kind"}, the
    distractors drawn from the same kind with a fixed seed."""
    rng = random.Random(seed)
    docs = []
    for kind, items in _KINDS.items():
        answers = sorted({answer for _, answer in items})
        for prompt, answer in items:
            choices = rng.sample([a for a in answers if a != answer], 3) + [answer]
            rng.shuffle(choices)
            docs.append({"question": prompt, "choices": choices, "answer": choices.index(answer), "kind": kind})
    return docs


def write_task(folder: Path) -> str:
    """Write the task (lm-eval YAML and its JSON-lines data) into `folder`; return the task's name."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in questions()))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data.resolve()))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return TASK


def offline_environment() -> dict:
    """os.environ with the Hugging Face libraries kept off the network."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class Server:
    """`hybridinfer serve` in a subprocess on a free port; `url` once it listens. A context manager."""

    def __init__(self, model: str, flags: list[str], ctx: int = 2048):
        command = [sys.executable, "-m", "hybridinfer", "serve", "-m", model, "--port", "0", "-c", str(ctx), *flags]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        listening = threading.Event()

        def drain():
            for line in self.process.stderr:
                self.lines.append(line)
                if line.startswith("server listening on "):
                    listening.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"hybridinfer serve did not start:\n{''.join(self.lines)}")
        self.url = next(line for line in self.lines if line.startswith("server listening on ")).split()[-1]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def lm_eval_command(url: str, name: str, task_dir: Path, output: Path, limit: int | None = None) -> list[str]:
    model_args = (f"base_url={url}/v1/completions,model={name},tokenizer_backend=remote,num_concurrent=1,"
                  "max_retries=1,max_length=2047")
    command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "local-completions",
               "--model_args", model_args, "--tasks", TASK, "--include_path", str(task_dir),
               "--output_path", str(output)]
    return command + (["--limit", str(limit)] if limit else [])


MODES = {"dense": [], "cats": ["--sparsity", "{s}"], "teal": ["--sparsity", "{s}", "--sparsity-method", "teal"]}


def evaluate(model: str, mode: str, sparsity: float, task_dir: Path, work: Path, threads: int | None,
             limit: int | None) -> dict:
    """lm_eval's results for `mode` of `model` (served, scored, stopped); adds "seconds"."""
    flags = [flag.format(s=sparsity) for flag in MODES[mode]] + (["-t", str(threads)] if threads else [])
    if mode != "dense":
        from hybridinfer.sparsity.thresholds import path_beside
        if not os.path.exists(path_beside(model, sparsity, mode)):
            print(f"--- making the {mode} sparsity file", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "hybridinfer", "sparsify", "-m", model, "--sparsity",
                            str(sparsity), "--method", mode], check=True)
    output = work / mode
    started = time.perf_counter()
    with Server(model, flags) as server:
        command = lm_eval_command(server.url, os.path.basename(model), task_dir, output, limit)
        print("---", " ".join(command), file=sys.stderr)
        subprocess.run(command, check=True, env=offline_environment())
    seconds = time.perf_counter() - started
    results = sorted(glob.glob(str(output / "**" / "results_*.json"), recursive=True), key=os.path.getmtime)
    if not results:
        raise RuntimeError(f"lm_eval wrote no results under {output}")
    found = json.loads(Path(results[-1]).read_text())["results"][TASK]
    return {**found, "seconds": seconds}


def table(rows: dict[str, dict], n_docs: int, sparsity: float) -> str:
    names = {"dense": "dense", "cats": f"CATS {100 * sparsity:g}%", "teal": f"TEAL {100 * sparsity:g}%"}
    lines = [f"{TASK}: {n_docs} questions, 4 choices each (chance: 0.25)", "",
             "| mode | acc | acc_norm | lm_eval + server (s) |", "| --- | --- | --- | --- |"]
    for mode, r in rows.items():
        lines.append(f"| {names[mode]} | {r['acc,none']:.3f} ± {r['acc_stderr,none']:.3f} | "
                     f"{r['acc_norm,none']:.3f} ± {r['acc_norm_stderr,none']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", default=None, help="GGUF file (default: the default model, fetched)")
    parser.add_argument("--modes", default="dense,cats,teal", help="comma-separated: dense, cats, teal")
    parser.add_argument("--sparsity", type=float, default=0.4, help="target of the CATS and TEAL modes")
    parser.add_argument("-t", "--threads", type=int, default=None, help="the server's -t")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--work", default=None, help="folder for the task and lm_eval's output (default: temporary)")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from hybridinfer.default_model import ensure_default_model
        model = str(ensure_default_model())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="hybridinfer-eval-"))
    task_dir = work / "task"
    write_task(task_dir)
    rows = {mode: evaluate(model, mode, args.sparsity, task_dir, work, args.threads, args.limit) for mode in modes}
    n_docs = min(len(questions()), args.limit or len(questions()))
    print(table(rows, n_docs, args.sparsity))


if __name__ == "__main__":
    main()
