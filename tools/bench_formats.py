"""Formats side by side (not a test): GB/s of a 4096x11008 matvec and of S3 over an 11008x4096 down_t (20% of
rows) for Q4_0, Q5_0, Q5_1 and Q4_1 (or the formats given), on 1 and 2 threads, int8 and float32 activations, every
case timed alternately in one run, each call on the next of a pool of distinct matrices (median and best); S3 for
the formats it reads (not the K-quants, whose transposes are 32-block formats); docs/cpu-decoding.md, "Q5_0 and
Q5_1" and "K-quants".

Usage: python -m tools.bench_formats [POOL_MB] [REPEATS] [FORMATS]   (default 300 MB per format and shape, 25
       repeats, q4_0,q5_0,q5_1,q4_1)
"""

import statistics
import sys
import time

import numba
import numpy as np
from gguf import GGMLQuantizationType as T

from hybridinfer.eval.kernel_bench import random_weight_bytes
from hybridinfer.kernels import cpu_quant
from hybridinfer.kernels.packed import pack
from hybridinfer.model_file.weight_formats import FORMATS as REGISTRY

FORMATS = [T.Q4_0, T.Q5_0, T.Q5_1, T.Q4_1]  # (main() may replace them)
DENSE, SPARSE = (4096, 11008), (11008, 4096)
WARMUP = 2


def pools(rng, shape, pool_mb):
    """Per format: distinct packed matrices of `shape`, about pool_mb in all (at least 4)."""
    result = {}
    for qtype in FORMATS:
        first = pack((random_weight_bytes(rng, qtype, shape), qtype, shape))
        count = max(4, -(-pool_mb * 10**6 // first.nbytes))
        result[qtype] = [first] + [pack((random_weight_bytes(rng, qtype, shape), qtype, shape))
                                   for _ in range(count - 1)]
    return result


def timed(call, repeats):
    """{(format, float_activations, threads): [GB/s per call]}: call(matrix_index, case) -> bytes read, timed."""
    cases = [(qtype, floats, threads) for threads in (1, 2) for floats in (False, True) for qtype in FORMATS]
    rates = {case: [] for case in cases}
    for r in range(WARMUP + repeats):
        for case in cases:
            numba.set_num_threads(case[2])
            start = time.perf_counter()
            nbytes = call(r, case)
            seconds = time.perf_counter() - start
            if r >= WARMUP:
                rates[case].append(nbytes / seconds / 1e9)
    return rates


def table(title, rates):
    print(title)
    print("| threads | activations | " + " | ".join(q.name for q in FORMATS) + " |")
    for threads in (1, 2):
        for floats in (False, True):
            cells = [f"{statistics.median(rates[(q, floats, threads)]):.1f} ({max(rates[(q, floats, threads)]):.1f})"
                     for q in FORMATS]
            print(f"| {threads} | {'float32' if floats else 'int8'} | " + " | ".join(cells) + " |")


def main():
    pool_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    if len(sys.argv) > 3:
        FORMATS[:] = [T[name.upper()] for name in sys.argv[3].split(",")]
    rng = np.random.default_rng(0)

    dense = pools(rng, DENSE, pool_mb)
    x = cpu_quant.prepare(rng.standard_normal(DENSE[1], dtype=np.float32))
    out = np.empty(DENSE[0], np.float32)

    def matvec(r, case):
        matrix = dense[case[0]][r % len(dense[case[0]])]
        cpu_quant.matvec(matrix, x, out, float_activations=case[1])
        return matrix.nbytes

    table(f"matvec {DENSE[0]}x{DENSE[1]}, GB/s median (best)", timed(matvec, repeats))
    del dense
    FORMATS[:] = [q for q in FORMATS if not REGISTRY[q].k_quant]
    if not FORMATS:
        return
    sparse = pools(rng, SPARSE, pool_mb)
    out_t = np.empty(SPARSE[1], np.float32)
    draws = {}

    def accumulate(r, case):
        if r not in draws:  # one active set per round, the same for every case
            rows = np.sort(rng.choice(SPARSE[0], SPARSE[0] // 5, replace=False)).astype(np.int64)
            draws.clear()
            draws[r] = rows, rng.standard_normal(rows.shape[0], dtype=np.float32)
        rows, coeffs = draws[r]
        matrix = sparse[case[0]][r % len(sparse[case[0]])]
        cpu_quant.accumulate_rows(matrix, rows, coeffs, out_t, float_activations=case[1])
        return rows.shape[0] * matrix.row_bytes

    table(f"S3 accumulate_rows {SPARSE[0]}x{SPARSE[1]}, 0.2 active, GB/s of the rows read, median (best)",
          timed(accumulate, repeats))


if __name__ == "__main__":
    main()
