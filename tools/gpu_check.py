"""GPU check (`make gpu-check`): one call on a fresh NVIDIA machine with its own Python answers, in four sections,
each under a deadline, each step in a process of its own (a crash, a hang or a timeout loses that step alone):

1. the machine: CPU model and flags; Python, torch, Triton, numba, numpy, gguf versions; CUDA, the GPU, its driver;
2. the decode table: a 13B-shaped ProSparse-like Q4_0 model with predictors synthesized straight into GGUF
   (`tools/synth_gguf.py`), decoded at budgets that hold 0, 25, 50 and 100% of the FFN neurons, next to -ngl at the
   same VRAM and to every layer on the GPU (`tools/gpu_check_steps.py`), one configuration per process: tokens/s,
   GPU share of FFN activations, ms per token of each side and of the transfers, load, first-token (kernel
   compilation) and numba compile seconds;
3. the GPU kernel and hybrid tests on the device, collected with pydantic and FastAPI hidden
   (`tools/hide_server_deps.py`: the server's dependencies, which the device's Python lacks), every failure and
   error printed whole;
4. the GPU kernels one by one at the shape's layer sizes (`hybridinfer/eval/gpu_kernel_bench.py`): GB/s of each
   format's GEMV, the sparse FFN and the attention at contexts up to 32k (at several position shares), beside a
   device-to-device copy's, each row printed as it is measured.

Output is unbuffered and also written to --out. It installs nothing: it imports only the standard library itself;
`gguf`, if missing, travels as a wheel unpacked onto PYTHONPATH (docs/hybrid.md). `--device cpu --layers 2` dry-runs
every step on the CPU (the torch twins; Triton interpreted in the tests); `--device cpu --shape tiny --quick
--deadline 350` does so within 6 minutes on a loaded 2-core machine with an empty kernel cache (docs/hybrid.md).

Usage: PYTHONPATH=. python tools/gpu_check.py [--device cuda] [--shape 13b] [--layers N] [-n TOKENS]
           [--deadline SECONDS] [--tests-seconds SECONDS] [--kernels-seconds SECONDS] [--tests-k EXPR] [--quick]
           [--out FILE] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = [sys.executable, "-u", str(ROOT / "tools" / "gpu_check_steps.py")]
RESULT_MARK = "GPU_CHECK_RESULT "  # as gpu_check_steps.RESULT_MARK (not imported: that module needs torch)
TESTS = ["tests/test_gpu_attention.py", "tests/test_gpu_norms.py", "tests/test_gpu_predictor.py",
         "tests/test_gpu_launches.py", "tests/test_decode_graphs.py", "tests/test_gpu_kernels.py",
         "tests/test_gpu_fused_kernels.py",
         "tests/test_hybrid.py", "tests/test_hybrid_kquants.py",
         "tests/test_hybrid_architectures.py"]  # the quick ones first, then the hybrid runtime's
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "avx_vnni")
MODULES = ("torch", "triton", "numba", "llvmlite", "numpy", "gguf", "pydantic")
QUICK = {"tests/test_gpu_attention.py": "h8kv2 or allocates or compile", "tests/test_gpu_kernels.py": "Q4_0",
         "tests/test_decode_graphs.py": "recorded",
         "tests/test_hybrid_kquants.py": "Q4_K",
         "tests/test_hybrid.py": "Q4_0 and not (exact_equals_packed_exact and triton)",  # that one: 100 s interpreted
         "tests/test_gpu_fused_kernels.py": "Q4_0 and not mixed",
         "tests/test_hybrid_architectures.py": "gemma3 and not last"}  # --quick: one case of each kind
FIRST_SHARE = 0.6  # of the table's time left, the most the configuration that compiles the CPU kernels may take
MIN_STEP_S = 20  # what each configuration still to run keeps of the table's time (the first may take 3 times that)


class Report:
    """Lines to stdout (flushed at once) and to a file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, line: str = "") -> None:
        with self.lock:
            print(line, flush=True)
            self.file.write(line + "\n")


def run_step(report: Report, command: list[str], timeout: float, env: dict | None = None,
             indent: str = "    ") -> tuple[dict | None, str]:
    """Run `command` in a process group of its own, echoing its output as it comes; kill the group at `timeout`
    seconds. (its RESULT_MARK record or None, how it ended: "ok", "exit N" or "timed out after N s")."""
    found: list[dict] = []
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace", start_new_session=True)

    def echo() -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(RESULT_MARK):
                found.append(json.loads(line[len(RESULT_MARK):]))
            else:
                report(indent + line)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=max(timeout, 1))
        ended = "ok" if code == 0 else f"exit {code}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        ended = f"timed out after {timeout:.0f} s"
    reader.join(timeout=10)
    return (found[-1] if found else None), ended


def probe() -> None:
    """Section 1, run in a process of its own (an import that crashes loses only its line)."""
    import importlib

    info = platform.uname()
    print(f"host {info.node}: {info.system} {info.release} {info.machine}; Python {platform.python_version()} "
          f"({sys.executable}); {os.cpu_count()} CPUs")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                     "?")
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")),
                         []))
        print(f"CPU: {model}; flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + str(CPU_FLAGS)}")
    except OSError as error:
        print(f"CPU: /proc/cpuinfo unreadable ({error})")
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None) or _distribution_version(name)
            print(f"{name} {version} ({Path(module.__file__).parent})")
        except Exception as error:  # noqa: BLE001  (any failure to import is what this line reports)
            print(f"{name}: not importable ({type(error).__name__}: {error})")
    try:
        import numba
        print(f"numba threads {numba.get_num_threads()}, threading layer default {numba.config.THREADING_LAYER}")
        import torch
        print(f"torch CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, torch threads "
              f"{torch.get_num_threads()}, CUDA available: {torch.cuda.is_available()}")
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"GPU {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                  f"{p.multi_processor_count} SMs")
    except Exception as error:  # noqa: BLE001
        print(f"torch/numba details: {type(error).__name__}: {error}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        print(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"nvidia-smi: {error}")


def cuda_visible(env: dict) -> bool:
    check = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        return subprocess.run([sys.executable, "-c", check], env=env, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def table(report: Report, args, scratch: Path, env: dict, deadline: float) -> None:
    """Section 2: the plan step, then each configuration in its own process."""
    started = time.monotonic()
    command = STEPS + ["plan", str(scratch / "prosparse-like"), "--device", args.device, "--shape", args.shape]
    command += ["--layers", str(args.layers)] if args.layers else []
    plan, ended = run_step(report, command, deadline - time.monotonic(), env)
    if plan is None:
        report(f"plan: no model ({ended}, {time.monotonic() - started:.0f} s): no decode table")
        return
    report(f"synthesized {plan['model_gb']:.2f} GB Q4_0 + {plan['predictors_gb']:.2f} GB predictors in "
           f"{plan['synth_s']:.0f} s; {plan['n_layer']} layers, n_embd {plan['n_embd']}, n_ff {plan['n_ff']}; GPU: "
           f"attention + KV ({plan['n_ctx']} tokens) + predictors + output {plan['fixed_gib']:.2f} GiB, FFN neurons "
           f"{plan['ffn_gib']:.2f} GiB")
    report("")
    header = ("| configuration | GPU GiB | tokens/s | GPU FFN share | GPU ms | CPU ms | transfer ms | load s | "
              "first tokens s | numba compile s |")
    rows = [header, "| --- |" + " ---: |" * 9]
    report(header)
    report(rows[1])
    configs, models = plan["configs"], []
    for i, config in enumerate(configs):
        left = deadline - time.monotonic()
        timeout = max(left - MIN_STEP_S * (len(configs) - i - 1), min(left, MIN_STEP_S * 3))
        if config.get("compiles"):  # it compiles the CPU kernels (numba) that the later ones load from its cache
            timeout = max(timeout, FIRST_SHARE * left)
        if timeout < MIN_STEP_S:
            row = f"| {config['label']} | not run: the table's deadline has passed |"
        else:
            record, ended = run_step(report, STEPS + ["decode", json.dumps(config), "--device", args.device, "-n",
                                                      str(args.tokens)], timeout, env)
            row = table_row(record) if record is not None else f"| {config['label']} | failed: {ended} |"
            if record is not None and record.get("model"):
                models.append(model_row(record))
        rows.append(row)
        report(row)
    report("")
    report("the table again, in one piece:")
    for row in rows:
        report(row)
    report("")
    report("ms per token, measured and modelled (tools/gpu_token_model.py: bytes at the bandwidth measured in the "
           "same process, launches x launch time, copies x copy time; a lower bound):")
    for row in MODEL_HEADER + models:
        report(row)


MODEL_HEADER = ["| configuration | measured ms | = GPU | + CPU | + transfers | + untimed | model ms | = GPU MB / GB/s "
                "| + launches x us | + CPU MB / GB/s | + copies | measured / model |",
                "| --- |" + " ---: |" * 11]


def model_row(record: dict) -> str:
    m = record["model"]
    p = m["probe"]
    return (f"| {record['label']} | {m['measured_ms']:.2f} | {m['gpu_ms']:.2f} | {m['cpu_ms']:.2f} | "
            f"{m['transfer_ms']:.2f} | {m['other_ms']:.2f} | {m['model_ms']:.2f} | "
            f"{m['gpu_bytes'] / 1e6:.0f} / {p['device_gbs']:.0f} = {m['model_gpu_ms']:.2f} | "
            f"{m['launches']} x {p['launch_us']:.1f} = {m['model_launch_ms']:.2f} | "
            f"{m['cpu_bytes'] / 1e6:.0f} / {p['cpu_gbs']:.0f} = {m['model_cpu_ms']:.2f} | "
            f"{m['copies']} = {m['model_copy_ms']:.2f} | {m['measured_ms'] / max(m['model_ms'], 1e-9):.2f}x |")


def table_row(record: dict) -> str:
    r = record["hybrid"]

    def ms(key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "-"

    return (f"| {record['label']} | {r.get('gpu_bytes', 0) / 2**30:.2f} | {record['tokens_per_s']:.2f} | "
            f"{100 * r.get('gpu_ffn_share', 0):.0f}% | {ms('gpu_ms_per_token')} | {ms('cpu_ms_per_token')} | "
            f"{ms('transfer_ms_per_token')} | {record['load_s']:.1f} | {record['first_s']:.1f} | "
            f"{record['numba_compile_s']:.1f} |")


def tests(report: Report, args, env: dict, deadline: float) -> None:
    """Section 3: pytest on each test file in a process of its own, the server's dependencies hidden, its whole
    output echoed (failures and errors in full); each file keeps MIN_STEP_S of the time for each one after it."""
    env = {**env, "HYBRIDINFER_TEST_DEVICE": args.device}
    summary = []
    for i, path in enumerate(TESTS):
        left = deadline - time.monotonic()
        timeout = max(left - MIN_STEP_S * (len(TESTS) - i - 1), min(left, MIN_STEP_S * 3))
        if timeout < MIN_STEP_S:
            summary.append(f"{path}: not run (the deadline has passed)")
            continue
        report(f"### {path}")
        started = time.monotonic()
        command = [sys.executable, "-u", "-m", "pytest", "-p", "tools.hide_server_deps", "-o", "addopts=", "-q",
                   "-rfE", "--tb=long", "-p", "no:cacheprovider", path]
        chosen = args.tests_k or (QUICK.get(path) if args.quick else None)
        _, ended = run_step(report, command + (["-k", chosen] if chosen else []), timeout, env, "")
        summary.append(f"{path}: {ended} ({time.monotonic() - started:.0f} s; pytest's exit 1 means failures)")
    report("")
    for line in summary:
        report(line)


def kernels(report: Report, args, env: dict, deadline: float) -> None:
    """Section 4: the kernel benchmark in a process of its own, until the deadline (a dry run: small pools)."""
    command = [sys.executable, "-u", "-m", "hybridinfer.eval.gpu_kernel_bench", "--device", args.device, "--shape",
               args.shape]
    if not args.device.startswith("cuda"):  # the CPU device's torch twins: a dry run, small and short
        command += ["--pool-mb", "4", "--repeats", "2", "--contexts", "64,300"]
    _, ended = run_step(report, command, deadline - time.monotonic(), env, "")
    report(f"(kernel benchmark: {ended})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="13b")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers (a dry run)")
    parser.add_argument("-n", "--tokens", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=540, help="seconds for the whole check")
    parser.add_argument("--tests-seconds", type=float, default=180, help="seconds kept for the tests")
    parser.add_argument("--kernels-seconds", type=float, default=None,
                        help="seconds kept for the kernel benchmark (default: 45 on CUDA, 15 for a dry run's)")
    parser.add_argument("--tests-k", default=None, help="pytest -k expression selecting the tests")
    parser.add_argument("--quick", action="store_true", help="a dry run's tests: one weight format, one shape")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", default="gpu-check.txt", help="the report, also written here")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe()
    began = time.monotonic()
    report = Report(Path(args.out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    deadline = began + args.deadline
    if args.kernels_seconds is None:
        args.kernels_seconds = 45 if args.device.startswith("cuda") else 15

    def section(title: str) -> float:
        report(f"\n## {title} ({time.monotonic() - began:.0f} s since the start)\n")
        return time.monotonic()

    start = section("1. the machine")
    _, ended = run_step(report, [sys.executable, "-u", str(Path(__file__).resolve()), "--probe"], 120, env, "")
    report(f"(probe: {ended}, {time.monotonic() - start:.0f} s)")
    if args.device.startswith("cuda") and not cuda_visible(env):
        report("error: no CUDA GPU is visible to torch here; run on a GPU machine, or pass --device cpu to dry-run")
        sys.exit(1)
    start = section(f"2. decode table on {args.device}")
    reserve = 0 if args.skip_tests else args.tests_seconds
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        table(report, args, Path(scratch), env, deadline - reserve - args.kernels_seconds)
    report(f"(decode table: {time.monotonic() - start:.0f} s)")
    if not args.skip_tests:
        start = section(f"3. GPU tests on {args.device}")
        tests(report, args, env, deadline - args.kernels_seconds)
        report(f"(tests: {time.monotonic() - start:.0f} s)")
    start = section(f"4. GPU kernels on {args.device}")
    kernels(report, args, env, deadline)
    report(f"(kernels: {time.monotonic() - start:.0f} s)")
    report(f"\n(gpu-check took {time.monotonic() - began:.0f} s; this report is also in {args.out})")


if __name__ == "__main__":
    main()
