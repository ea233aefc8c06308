"""The GPU kernel benchmark (`eval/gpu_kernel_bench.py`) on the CPU device: every row measured, the bytes each row
counts, the attention's position shares, its command line's errors. (Its figures mean something on a GPU only:
`make gpu-check` runs it there.)"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridinfer.eval import gpu_kernel_bench as bench

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_every_kernel_measured_with_the_bytes_it_reads():
    machine = bench.machine_figures(CPU, "torch")
    rows = []
    bench.run(machine, "tiny", ["q4_0", "q6_k"], [40, 100], 1, 2, rows.append)
    n_embd, n_ff, n_head, n_kv, head_dim = bench.SHAPES["tiny"]
    assert [r["kernel"] for r in rows] == (["matvec q4_0"] * 2 + ["hot_ffn q4_0"] + ["attention f16"] * 4
                                          + ["matvec q6_k"] * 2)
    assert all(r["us"] > 0 and r["gbs"] > 0 for r in rows)
    gate = bench.random_matrix(np.random.default_rng(0), bench.FORMATS["q4_0"], (n_ff, n_embd), CPU)
    assert rows[0]["mb"] == pytest.approx((gate.nbytes + 4 * n_embd) / 1e6)
    assert rows[1]["mb"] == pytest.approx((gate.nbytes + 4 * n_ff) / 1e6)  # the same bytes, transposed shape
    row_bytes = gate.nbytes / n_ff  # hot_ffn: candidates' gate rows, fired ones' up and down_t rows
    candidates, fired = rows[2]["candidates"], rows[2]["fired"]
    assert 0 < fired <= candidates < n_ff
    assert rows[2]["mb"] == pytest.approx((candidates * row_bytes + 2 * fired * row_bytes + 4 * n_embd) / 1e6)
    kv_bytes = 2 * 2 * head_dim * 101  # keys and values, float16, positions 0..100
    assert rows[4]["mb"] == pytest.approx((n_kv * kv_bytes + 4 * (n_head + 2 * n_kv) * head_dim) / 1e6)
    assert rows[6]["shape"].startswith(f"{n_head}/{bench.GROUPED_KV_HEADS} heads")


def test_the_attention_kernel_at_its_chosen_shares_and_others():
    """At a short context the shares a launch can use are few (one row); at a long one, the chosen shares and a
    quarter of them (4 times as many: over MAX_SPLITS)."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    rows = list(bench.attention_rows("triton", 4, 1, 16, [70, 5000], CPU, 1, 1, 1.0))
    assert [r["shape"] for r in rows] == ["4/1 heads of 16, context 70, 2 shares (chosen)",
                                          "4/1 heads of 16, context 5000, 16 shares",
                                          "4/1 heads of 16, context 5000, 64 shares (chosen)"]


def test_a_copy_reads_its_bytes_at_a_finite_rate():
    assert 0 < bench.copy_gbs(CPU, 1 << 20) < float("inf")
    matrix = bench.random_matrix(np.random.default_rng(1), bench.FORMATS["q8_0"], (64, 64), CPU)
    pool = bench.copies(matrix, 3 * matrix.nbytes)
    assert len(pool) == 3 and all(torch.equal(m.quants, matrix.quants) for m in pool)
    assert len({m.quants.data_ptr() for m in pool}) == 3  # distinct memory: each call reads its own bytes


@pytest.mark.parametrize("arguments, message", [
    (["--formats", "q4_0,q9"], "--formats: unknown format 'q9'"),
    (["--contexts", "512,x"], "--contexts: expected numbers"),
    (["--contexts", "0"], "take positive numbers"),
    (["--device", "nowhere"], "is not a torch device"),
    (["--device", "cpu", "--gpu-kernels", "triton"], "set TRITON_INTERPRET=1"),
])
def test_bad_arguments_get_one_line_and_exit_2(arguments, message):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "hybridinfer.eval.gpu_kernel_bench", *arguments],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and message in result.stderr.splitlines()[-1], result.stderr
    assert "Traceback" not in result.stderr
