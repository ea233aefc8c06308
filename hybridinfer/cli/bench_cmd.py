"""`hybridinfer bench`: llama-bench style prompt (pp) and generation (tg) rates for one runtime setup, optionally
next to llama.cpp's on the same file; or, with --kernels, the CPU kernels against the machine's bandwidth (with
--device cuda: the GPU side's kernels against the GPU's)."""

from __future__ import annotations

import dataclasses
import json

import click

from ..hybrid.report import report_lines
from ..options import thread_count
from .options import model_options, open_engine, runtime_settings


@click.command()
@model_options
@click.option("-p", "--n-prompt", type=int, default=64, show_default=True, help="prompt tokens (0 = skip pp)")
@click.option("-n", "--n-gen", type=int, default=32, show_default=True, help="generated tokens (0 = skip tg)")
@click.option("-r", "--repetitions", type=int, default=3, show_default=True)
@click.option("--llama-cpp", "llama_cpp", is_flag=True,
              help="also time llama.cpp's decoding of the same file (needs the optional llama-cpp-python)")
@click.option("--kernels", is_flag=True, help="benchmark the CPU kernels at 7B layer shapes instead of a model "
              "(with --device cuda: the GPU kernels at 13B shapes)")
@click.option("--formats", default=None, help="--kernels: weight formats [CPU: f16,bf16,q8_0,q4_0; GPU: "
              "q4_0,q4_1,q8_0,q4_k,q6_k,q5_0]")
@click.option("--parallel", default=None, metavar="N[,N...]",
              help="aggregate decode rate of N sequences decoded together (as `serve --parallel N`), e.g. 1,2,4,8")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def bench(n_prompt, n_gen, repetitions, llama_cpp, kernels, formats, parallel, as_json, **kwargs):
    """Measure prompt processing and generation speed (medians of -r runs)."""
    if kernels and kwargs.get("device") not in (None, "cpu"):
        _gpu_kernels(kwargs["device"], kwargs.get("gpu_kernels"), formats, repetitions, as_json)
        return
    if kernels:
        _kernels(formats or "f16,bf16,q8_0,q4_0", repetitions, kwargs["n_threads"], as_json)
        return
    if parallel is not None:
        _parallel(_counts(parallel), n_gen, repetitions, as_json, kwargs)
        return
    from ..eval.benchmark import run_bench
    model_path, options = runtime_settings(kwargs)
    if options.n_ctx is None:
        options = dataclasses.replace(options, n_ctx=max(n_prompt, 16 + n_gen) + 8)
    engine = open_engine(model_path, options)
    results = run_bench(engine, n_prompt, n_gen, repetitions)
    mode = engine.mode
    name = engine.file.get("general.name") or engine.path
    reference = _llama_cpp(engine.path, options.n_threads, n_gen, repetitions) if llama_cpp and n_gen else None
    startup = engine.startup_report()
    peak_rss = startup["peak_rss_bytes"]
    if as_json:
        click.echo(json.dumps({"model": name, "mode": mode, "backend": engine.backend, "load_ms": engine.load_ms,
                               "peak_rss_bytes": peak_rss, "startup": startup, "results": [r.as_dict() for r in results],
                               "llama_cpp": reference}))
        return
    click.echo("| model | mode | test | t/s |")
    click.echo("| --- | --- | --- | ---: |")
    for result in results:
        click.echo(f"| {name} | {mode} ({engine.backend}) | {result.test} | {result.tokens_per_second:.2f} |")
    measured = next((r.sparsity for r in results if r.sparsity is not None), None)
    if measured is not None:
        what, unit = engine.sparse_ffn.stats.label
        click.echo(f"{what} while decoding: {100 * measured:.1f}% {unit}")
    hybrid = next((r.hybrid for r in results if r.hybrid), None)
    if hybrid is not None:
        for line in report_lines(hybrid):
            click.echo(line)
    stages = ", ".join(f"{k[:-3]} {startup[k] / 1000:.2f} s" for k in ("open_ms", "predictors_ms", "weights_ms",
                                                                       "warmup_ms", "compile_ms") if k in startup)
    mapped = " (mapped from the repack cache)" if startup.get("weights_from_cache") else ""
    click.echo(f"load {engine.load_ms / 1000:.1f} s: {stages}{mapped}; peak RSS {peak_rss / 2**30:.2f} GiB")
    if reference is not None:
        ours = next(r.tokens_per_second for r in results if r.test.startswith("tg"))
        click.echo(f"| {name} | llama.cpp {reference['version']}, dense | tg{n_gen} | "
                   f"{reference['tokens_per_second']:.2f} |")
        click.echo(f"\nratio to llama.cpp: {ours / reference['tokens_per_second']:.2f}x")


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected numbers of sequences like 1,2,4,8, got {text!r}", param_hint="--parallel")
    return counts


def _parallel(counts: list[int], n_gen: int, repetitions: int, as_json: bool, kwargs: dict) -> None:
    from ..eval.parallel_bench import context_for, parallel_rates
    model_path, options = runtime_settings(kwargs)
    if options.n_ctx is None:
        options = dataclasses.replace(options, n_ctx=context_for(counts, n_gen))
    engine = open_engine(model_path, options)
    records = parallel_rates(engine, counts, max(n_gen, 2), repetitions)
    mode = engine.mode
    name = engine.file.get("general.name") or engine.path
    if as_json:
        click.echo(json.dumps({"model": name, "mode": mode, "n_gen": n_gen, "results": records}))
        return
    click.echo("| model | mode | sequences | aggregate t/s | t/s per sequence | vs 1 |")
    click.echo("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in records:
        click.echo(f"| {name} | {mode} | {r['n']} | {r['tokens_per_second']:.2f} | {r['per_sequence']:.2f} | "
                   f"{r['speedup']:.2f}x |")


def _llama_cpp(path: str, n_threads: int | None, n_gen: int, repetitions: int) -> dict:
    from ..eval import llamacpp_reference
    from ..errors import HybridInferError
    if not llamacpp_reference.available():
        raise HybridInferError("--llama-cpp needs llama-cpp-python: pip install 'hybridinfer[llama]'")
    return llamacpp_reference.decode_rate(path, n_threads=n_threads or 2, n_gen=n_gen, repetitions=repetitions)


def _gpu_kernels(device_name: str, kernels: str | None, formats: str | None, repetitions: int, as_json: bool) -> None:
    from ..eval import gpu_kernel_bench as bench
    from ..errors import HybridInferError
    formats = (formats or bench.DEFAULT_FORMATS).split(",")
    try:
        bench.check_formats(formats)
        device = bench.device_for(device_name, kernels)
    except ValueError as error:
        raise HybridInferError(f"--kernels on {device_name}: {error}") from None
    bench.report(bench.machine_figures(device, kernels), "13b", formats, list(bench.CONTEXTS), bench.POOL_MB,
                 max(repetitions, 5), as_json, click.echo)


def _kernels(formats: str, repetitions: int, n_threads: int | None, as_json: bool) -> None:
    import numba

    from ..eval import kernel_bench
    from ..errors import HybridInferError
    threads = thread_count(n_threads) if n_threads is not None else numba.config.NUMBA_NUM_THREADS
    try:
        machine, results = kernel_bench.run(threads, 1024, max(repetitions, 7), 2, formats.split(","))
    except ValueError as error:
        raise HybridInferError(f"--formats: {error}") from None
    if as_json:
        click.echo(json.dumps({"machine": machine, "threads": threads, "results": results}))
    else:
        kernel_bench.print_table(machine, results, threads)
