"""Kernel benchmark (not a test): packed-weight CPU kernels against this machine's memory bandwidth, measured in the
same run. llama-bench style table, or --json.

Usage: hybridinfer bench --kernels [--formats q4_0,q8_0] [--json]   (or: python -m hybridinfer.eval.kernel_bench
       [--threads 2] [--pool-mb 1024] [--repeats 15] [--formats q4_0,q8_0] [--threading-layer workqueue] [--json])

Machine ceilings (numba 2-thread reductions, before and after the kernels, averaged): sequential read of a ~1 GB
array; random rows = a fresh random 20% subset (sorted, as an active-neuron mask yields) of the 4 KB rows of a
~1 GB pool. Each kernel call is also paired with a plain reduction over exactly the bytes it reads (the same
matrix, the same active rows), timed alternately in the same loop: on a shared, noisy machine that ratio is the
steadiest measure of how close a kernel comes to reading at memory speed.

Kernels rotate over a pool of distinct matrices much larger than L3 and draw a fresh active set per call; warm-up,
repeats, median (and best). GB/s = GGUF bytes (of the matrix, or of the selected rows) / time. Quantized formats
run "int8" (activations, or accumulate_rows' coefficients, quantized per block: the default) and, for matvec and
accumulate_rows, with float_activations (float32) too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

from ..kernels import cpu_quant
from ..kernels.packed import pack
from ..kernels.packed_k import k_decode_blocks, k_encode_blocks
from ..model_file import weight_formats

SHAPES = {"11008x4096 (gate/up)": (11008, 4096), "4096x11008 (down)": (4096, 11008), "4096x4096 (attn)": (4096, 4096)}
SPARSE_SHAPE = (11008, 4096)  # gate/up rows for matvec_rows; down_t (neuron rows) for accumulate_rows
FRACTIONS = (0.5, 0.2, 0.1)
PREFILL_TOKENS = 32
FORMATS = {qtype.name.lower(): qtype for qtype in weight_formats.CPU_NATIVE_TYPES}


@numba.njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _row_sums(pool, rows, out):
    """out[k] = sum(pool[rows[k]]), pool (n, row_floats) float32: every byte of the selected rows is read once."""
    for k in numba.prange(rows.shape[0]):
        row = pool[rows[k]]
        acc = np.float32(0.0)
        for j in range(row.shape[0]):
            acc += row[j]
        out[k] = acc


def timed(calls, count: int, warmup: int) -> list[list[float]]:
    """Seconds of each call(i), for i in range(count), the calls alternating, after `warmup` untimed rounds."""
    for i in range(warmup):
        for call in calls:
            call(i)
    seconds = [[] for _ in calls]
    for i in range(count):
        for call, times in zip(calls, seconds):
            start = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - start)
    return seconds


def random_bits(rng, shape, dtype) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


def random_weight_bytes(rng, qtype: T, shape: tuple[int, int]) -> np.ndarray:
    """A GGUF tensor's raw bytes with random, finite, non-zero content (quantizing GB of normals takes minutes)."""
    rows, cols = shape
    if qtype == T.F32:
        return ((random_bits(rng, shape, np.uint32) & 0x807FFFFF) | 0x3F000000).view(np.float32)  # +-[0.5, 1)
    if qtype in (T.F16, T.BF16):
        sign_mantissa, exponent = (0x83FF, 0x3800) if qtype == T.F16 else (0x807F, 0x3F00)
        return ((random_bits(rng, shape, np.uint16) & sign_mantissa) | exponent).view(np.uint8).reshape(rows, -1)
    fmt = weight_formats.FORMATS[qtype]
    if fmt.k_quant:  # random codes and quants under f16 super-block factors ~ 2^-8
        q, codes, factors = k_decode_blocks(qtype, random_bits(rng, (rows, cols // fmt.block_size, fmt.block_bytes),
                                                               np.uint8))
        factors = np.where(factors != 0, np.float32(2.0 ** -8), np.float32(0.0))
        return k_encode_blocks(qtype, q, codes, factors).reshape(rows, -1)
    fields = 2 * len(fmt.fields)  # the f16 header fields (Q5_x's word of fifth bits stays random)
    raw = random_bits(rng, (rows, cols // 32, fmt.block_bytes), np.uint8)
    halves = raw[:, :, :fields].copy().view(np.uint16)
    raw[:, :, :fields] = ((halves & 0x03FF) | 0x1C00).view(np.uint8)  # f16 scales (and minimums) ~ 2^-8
    return raw.reshape(rows, -1)


def make_pool(rng, qtype: T, shape, pool_bytes: int):
    """Distinct packed matrices totalling ~pool_bytes (at least 4), and packing throughput in MB/s of GGUF bytes
    (None for float formats, which pack as zero-copy views)."""
    raw = random_weight_bytes(rng, qtype, shape)
    start = time.perf_counter()
    first = pack((raw, qtype, shape))
    pack_mbs = raw.nbytes / (time.perf_counter() - start) / 1e6 if first.quantized else None
    count = max(4, -(-pool_bytes // first.nbytes))
    pool = [first] + [pack((random_weight_bytes(rng, qtype, shape), qtype, shape)) for _ in range(count - 1)]
    return pool, pack_mbs


def far(i: int, pool: list) -> int:
    """The pool index half the pool away from call i's: read alternately with it, but never just before it (which
    would leave it in L3 for the kernel)."""
    return (i + len(pool) // 2) % len(pool)


def as_float_rows(packed) -> np.ndarray:
    """The packed matrix's storage as float32 rows, for the plain reduction over the same bytes."""
    return packed.data.view(np.uint8).view(np.float32)


def measure_machine(rng, pool_bytes: int, repeats: int) -> dict:
    pool = np.ones((pool_bytes // 4096, 1024), dtype=np.float32)  # 4 KB rows (a reduction's speed is value-blind)
    every = np.arange(pool.shape[0])
    subsets = [np.sort(rng.choice(pool.shape[0], pool.shape[0] // 5, replace=False)) for _ in range(repeats + 2)]
    sums = np.empty(pool.shape[0], np.float32)
    sequential, random_rows = timed([lambda i: _row_sums(pool, every, sums),
                                     lambda i: _row_sums(pool, subsets[i], sums)], repeats, 2)
    chosen = subsets[0].shape[0] * 4096
    return {"sequential_gbs": pool.nbytes / statistics.median(sequential) / 1e9,
            "random_rows_gbs": chosen / statistics.median(random_rows) / 1e9, "pool_mb": pool.nbytes / 1e6}


def bench_format(rng, name: str, qtype: T, pool_bytes: int, repeats: int, warmup: int) -> list[dict]:
    results = []
    for label, shape in SHAPES.items():
        pool, pack_mbs = make_pool(rng, qtype, shape, pool_bytes)
        act = cpu_quant.prepare(rng.standard_normal(shape[1], dtype=np.float32))
        out, every = np.empty(shape[0], np.float32), np.arange(shape[0])
        sums = np.empty(shape[0], np.float32)
        for float_activations in ([False, True] if pool[0].quantized else [True]):
            kernel, plain = timed([lambda i: cpu_quant.matvec(pool[i % len(pool)], act, out,
                                                              float_activations=float_activations),
                                   lambda i: _row_sums(as_float_rows(pool[far(i, pool)]), every, sums)],
                                  repeats, warmup)
            results.append(record(label_of(name, pool[0], float_activations), "matvec", label, 1.0, pool[0].nbytes,
                                  kernel, plain, pool_mb=len(pool) * pool[0].nbytes / 1e6, pack_mbs=pack_mbs))
            pack_mbs = None
        if shape == SPARSE_SHAPE:
            results += bench_sparse(rng, name, pool, act, repeats, warmup, label)
            results += bench_prefill(rng, name, pool, repeats, label)
        pool = None  # free this pool before the next one is built
    return results


def bench_sparse(rng, name, pool, act, repeats, warmup, label) -> list[dict]:
    results = []
    rows, cols = pool[0].rows, pool[0].cols
    row_bytes = pool[0].nbytes // rows
    for fraction in FRACTIONS:
        k = int(rows * fraction)
        active = [np.sort(rng.choice(rows, k, replace=False)) for _ in range(repeats + warmup)]
        coeffs = rng.standard_normal(k, dtype=np.float32)
        out_rows, out_cols, sums = np.empty(k, np.float32), np.empty(cols, np.float32), np.empty(k, np.float32)

        def plain(i):
            _row_sums(as_float_rows(pool[far(i, pool)]), active[i], sums)

        kernel, reads = timed([lambda i: cpu_quant.matvec_rows(pool[i % len(pool)], act, active[i], out_rows), plain],
                              repeats, warmup)
        results.append(record(label_of(name, pool[0], False), "matvec_rows", label, fraction, k * row_bytes, kernel,
                              reads))
        s3_formats = [] if weight_formats.FORMATS[pool[0].qtype].k_quant else [False, True]  # K: down_t is not K
        for float_activations in (s3_formats if pool[0].quantized else [True]):
            kernel, reads = timed([lambda i: cpu_quant.accumulate_rows(pool[i % len(pool)], active[i], coeffs, out_cols,
                                                                       float_activations=float_activations), plain],
                                  repeats, warmup)
            results.append(record(label_of(name, pool[0], float_activations), "accumulate_rows", label + " as down_t",
                                  fraction, k * row_bytes, kernel, reads))
    return results


def bench_prefill(rng, name, pool, repeats, label) -> list[dict]:
    x = cpu_quant.prepare(rng.standard_normal((PREFILL_TOKENS, pool[0].cols), dtype=np.float32))
    out = np.empty((PREFILL_TOKENS, pool[0].rows), np.float32)
    (seconds,) = timed([lambda i: cpu_quant.matmul(pool[i % len(pool)], x, out)], max(3, repeats // 3), 1)
    entry = record(label_of(name, pool[0], False), f"matmul T={PREFILL_TOKENS}", label, 1.0, pool[0].nbytes, seconds)
    entry["gflops"] = 2 * PREFILL_TOKENS * pool[0].rows * pool[0].cols / statistics.median(seconds) / 1e9
    return [entry]


def label_of(name: str, packed, float_activations: bool) -> str:
    return name + ("" if float_activations or not packed.quantized else " int8")


def record(fmt, kernel, shape, fraction, nbytes, seconds, plain_seconds=None, **extra) -> dict:
    median = statistics.median(seconds)
    entry = {"format": fmt, "kernel": kernel, "shape": shape, "active": fraction, "bytes": nbytes, "ms": median * 1e3,
             "gbs": nbytes / median / 1e9, "best_gbs": nbytes / min(seconds) / 1e9, **extra}
    if plain_seconds:
        entry["plain_read_gbs"] = nbytes / statistics.median(plain_seconds) / 1e9
    return entry


def print_table(machine: dict, results: list[dict], threads: int) -> None:
    seq, rnd = machine["sequential_gbs"], machine["random_rows_gbs"]
    print(f"machine: {threads} threads ({numba.threading_layer()}), sequential read {seq:.1f} GB/s, random 20% of "
          f"4 KB rows {rnd:.1f} GB/s (before/after the kernels: {machine['sequential_runs']}, "
          f"{machine['random_rows_runs']}), pools ~{machine['pool_mb']:.0f} MB")
    print("| format | kernel | shape | active | ms | GB/s | best GB/s | same bytes, plain read GB/s | % of plain read "
          "| % of seq BW | % of random-row BW | time vs dense (ideal) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    dense_ms = {(r["format"].split()[0], r["shape"]): r["ms"] for r in results
                if r["kernel"] == "matvec" and (" int8" in r["format"] or r["format"] in ("f32", "f16", "bf16"))}
    for r in results:
        sparse = r["active"] < 1.0
        plain = r.get("plain_read_gbs")
        plain_cells = f"{plain:.1f} | {100 * r['gbs'] / plain:.0f}%" if plain else " | "
        vs_random = f"{100 * r['gbs'] / rnd:.0f}%" if sparse else ""
        base = dense_ms.get((r["format"].split()[0], r["shape"].replace(" as down_t", "")))
        ratio = f"{r['ms'] / base:.2f} ({r['active']:.2f})" if sparse and base else ""
        kernel = r["kernel"] + (f" ({r['gflops']:.0f} GFLOP/s)" if "gflops" in r else "")
        print(f"| {r['format']} | {kernel} | {r['shape']} | {r['active']:.2f} | {r['ms']:.3f} | {r['gbs']:.1f} | "
              f"{r['best_gbs']:.1f} | {plain_cells} | {100 * r['gbs'] / seq:.0f}% | {vs_random} | {ratio} |")
    packing = [f"{r['format'].split()[0]} {r['shape'].split()[0]} {r['pack_mbs']:.0f}" for r in results
               if r.get("pack_mbs")]
    if packing:
        print("packing throughput, MB/s of GGUF bytes (float formats pack as zero-copy views): " + ", ".join(packing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-mb", type=int, default=1024, help="bytes of distinct matrices per benchmark (>> L3)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: " + ", ".join(FORMATS))
    parser.add_argument("--threading-layer", default=None, choices=["workqueue", "omp", "tbb"],
                        help="numba threading layer (default: numba's choice, or $NUMBA_THREADING_LAYER)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.threading_layer:
        numba.config.THREADING_LAYER = args.threading_layer  # before the first parallel call
    machine, results = run(args.threads, args.pool_mb, args.repeats, args.warmup, args.formats.split(","))
    if args.json:
        print(json.dumps({"machine": machine, "threads": args.threads, "threading_layer": numba.threading_layer(),
                          "results": results}, indent=1))
    else:
        print_table(machine, results, args.threads)


def run(threads: int, pool_mb: int, repeats: int, warmup: int, formats: list[str]) -> tuple[dict, list[dict]]:
    """(machine bandwidths, measured before and after the kernels; one record per kernel measurement)."""
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    pool_bytes = pool_mb * 1_000_000
    before = measure_machine(rng, pool_bytes, repeats)
    results = []
    for name in formats:
        results += bench_format(rng, name, FORMATS[name], pool_bytes, repeats, warmup)
    after = measure_machine(rng, pool_bytes, repeats)
    machine = {"pool_mb": before["pool_mb"]}
    for key in ("sequential_gbs", "random_rows_gbs"):
        machine[key] = (before[key] + after[key]) / 2
        machine[key.replace("_gbs", "_runs")] = f"{before[key]:.1f}/{after[key]:.1f}"
    return machine, results


if __name__ == "__main__":
    main()
