"""hybridinfer.gpu: DeviceMatrix against gguf.quants, the torch twins against numpy, the Triton kernels against the
twins. Triton runs under TRITON_INTERPRET=1 on CPU tensors, or compiled on cuda with HYBRIDINFER_TEST_DEVICE=cuda."""

import os
import sys

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
# triton.language's own helpers (tl.zeros, ...) are decorated when triton is imported, so the variable must be set
# before that (torch's CPU build does not import triton)
LATE_INTERPRETER = DEVICE != "cuda" and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if DEVICE != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import re  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

from hybridinfer.errors import HybridInferError  # noqa: E402
from hybridinfer.gpu import kernels_for, reference  # noqa: E402
from hybridinfer.gpu.weights import (GPU_FORMATS, K_QUANT_FIELDS, WORD_FORMATS, block_fields,  # noqa: E402
                                     dequantize_rows, device_matrix, stored_columns)
from hybridinfer.model_file.gguf_file import GGUFTensor  # noqa: E402
from hybridinfer.model_file.weight_formats import GPU_NATIVE_TYPES  # noqa: E402
from triton_compile import run_compile_tool, skip_without_nvidia_tools  # noqa: E402

RTOL = 1e-5  # of the sum of |terms|: float32 accumulation over at most a few hundred terms


@pytest.fixture
def tk():
    pytest.importorskip("triton", reason="triton is not installed, so the Triton kernels cannot run")
    if LATE_INTERPRETER:
        pytest.fail("triton was imported before this module set TRITON_INTERPRET=1: run with it in the environment")
    from hybridinfer.gpu import triton_kernels

    return triton_kernels


# the modules behind triton_kernels whose settings the tests change: each where the function that reads it lives
@pytest.fixture
def kernel_common(tk):
    """split_k's settings (MIN_SPLIT_STEPS, TARGET_PROGRAMS), the epilogues, the split-K counters."""
    from hybridinfer.gpu import kernel_common

    return kernel_common


@pytest.fixture
def hot_ffn_kernels(tk):
    """hot_ffn's settings (CHUNK, S3_COLUMNS, S3_MAX_SHARES, TARGET_PROGRAMS for S3's shares) and its kernels."""
    from hybridinfer.gpu import hot_ffn_kernels

    return hot_ffn_kernels


class LaunchSpy:
    """Stands in for a Triton kernel: `kernel[grid](...)` records the grid, then launches the kernel."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.fixture
def small_chunks(monkeypatch):
    """Make the torch twins dequantize 3 rows at a time, so that the chunk loops take several steps."""
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 3 * 160)


# K-quant super-blocks of random bytes (gguf cannot encode K-quants) get f16 d (and dmin) of these sizes, so that
# their values are about standard normal: 1 / (typical sc * typical q), and dmin * m about the positive part's mean
K_QUANT_D = {T.Q4_K: (1 / 150, 1 / 30), T.Q5_K: (1 / 300, 1 / 15), T.Q6_K: (1 / 1400, 0)}


def width(qtype: T, cols: int) -> int:
    """`cols`, or 512 (two super-blocks, four column tiles) for a format whose blocks `cols` does not hold whole."""
    return cols if cols % GPU_FORMATS[qtype].block_size == 0 else 512


def gguf_raw(values: np.ndarray, qtype: T, rng=None) -> np.ndarray:
    """float32 values in GGUF's storage of `qtype`, as the gguf reader exposes them; a K-quant: random valid
    super-blocks of the same shape (rng), whose values are not `values`."""
    if qtype == T.F32:
        return values.astype(np.float32)
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype in K_QUANT_FIELDS:
        return k_quant_blocks(rng, qtype, values.shape[0], values.shape[1])
    return quants.quantize(values, qtype)


def k_quant_blocks(rng, qtype: T, rows: int, cols: int) -> np.ndarray:
    """(rows, bytes) uint8: random K-quant super-blocks (every bit pattern of the quants and sub-scales is valid)
    with f16 d and dmin around K_QUANT_D's."""
    fmt = GPU_FORMATS[qtype]
    blocks = rng.integers(0, 256, (rows * cols // fmt.block_size, fmt.block_bytes), dtype=np.uint8)
    for name, size in zip(("scales", "mins"), K_QUANT_D[qtype]):
        if name in block_fields(fmt):
            start, stop, _ = block_fields(fmt)[name]
            blocks[:, start:stop] = (size * rng.uniform(0.5, 1.5, (len(blocks), 1))).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def weight(rng, rows: int, cols: int, qtype: T):
    """(raw, float64 (rows, cols) dequantized by gguf, DeviceMatrix) of a random weight."""
    raw = gguf_raw(rng.standard_normal((rows, cols)).astype(np.float32), qtype, rng)
    exact = np.asarray(quants.dequantize(raw, qtype), dtype=np.float32).reshape(rows, cols)
    return raw, exact.astype(np.float64), device_matrix(raw, qtype, (rows, cols), DEVICE)


def tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)).to(DEVICE)


def assert_close(actual: torch.Tensor, expected, scale) -> None:
    """|actual - expected| <= RTOL * scale elementwise (scale: the sum of |terms| of each result) + 1e-30."""
    actual = actual.cpu().numpy()
    expected = np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_array_less(np.abs(actual - expected), RTOL * np.asarray(scale) + 1e-30)


def ffn_expected(gate, up, down_t, x, mask, threshold):
    """numpy float64 FFN of tokens x (T, n_embd) over n_hot neurons -> (h (T, n_hot), out, fired, out's scale)."""
    g = x @ gate.T
    fire = (g >= threshold) & (g != 0) & (True if mask is None else mask)
    a = np.where(fire, g, 0)
    h = a * (x @ up.T)
    scale = ((np.abs(x) @ np.abs(gate).T) * (np.abs(x) @ np.abs(up).T) * fire) @ np.abs(down_t)
    return h, h @ down_t, fire.sum(axis=-1), scale


# ---- DeviceMatrix --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_device_matrix_holds_the_gguf_bytes(qtype):
    rng = np.random.default_rng(1234)
    cols = width(qtype, 96)
    raw, exact, m = weight(rng, 37, cols, qtype)
    assert (m.rows, m.cols, m.qtype, m.device.type) == (37, cols, qtype, torch.device(DEVICE).type)
    assert m.nbytes == raw.nbytes and np.abs(exact).max() > 0
    assert m.values is None if m.quantized else (m.scales is None and m.quants is None)
    if m.quantized:
        fmt = GPU_FORMATS[qtype]
        n_blocks = cols // fmt.block_size
        assert m.scales.shape == (37, n_blocks) and m.scales.dtype == torch.float16
        assert (m.mins is not None) == (fmt.has_minimum or qtype in (T.Q4_K, T.Q5_K))
        assert (m.highs is not None) == (fmt.high_bits or qtype in (T.Q5_K, T.Q6_K))
        assert (m.sub_scales is not None) == (qtype in K_QUANT_FIELDS)
        assert m.quants.shape == (37, cols if qtype == T.Q8_0 else cols // 2)
        fields = sorted(block_fields(fmt).values())  # the fields tile the block
        assert fields[0][0] == 0 and fields[-1][1] == fmt.block_bytes
        assert all(a[1] == b[0] for a, b in zip(fields, fields[1:]))
    np.testing.assert_array_equal(dequantize_rows(m).cpu().numpy(), exact.astype(np.float32))
    np.testing.assert_array_equal(dequantize_rows(m, 3, 10).cpu().numpy(), exact[3:10].astype(np.float32))
    rows = np.array([5, 0, 36, 5], dtype=np.int64)
    picked = device_matrix(raw, qtype, (37, cols), DEVICE, rows=rows)
    assert picked.rows == 4 and picked.nbytes == raw[rows].nbytes
    np.testing.assert_array_equal(dequantize_rows(picked).cpu().numpy(), exact[rows].astype(np.float32))
    empty = device_matrix(raw, qtype, (37, cols), DEVICE, rows=np.zeros(0, dtype=np.int64))
    assert empty.rows == 0 and empty.nbytes == 0 and dequantize_rows(empty).shape == (0, cols)


@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_stored_order_rows_are_the_element_rows_permuted(qtype):
    """The torch twins' fast dequantization: columns in the stored (interleaved) order, `stored_columns` saying
    which element each holds, a permutation (every element once) for the interleaved formats, None otherwise."""
    rng = np.random.default_rng(4321)
    cols = width(qtype, 96)
    _, exact, m = weight(rng, 19, cols, qtype)
    stored = dequantize_rows(m, 2, 17, element_order=False).cpu().numpy()
    columns = stored_columns(m)
    if qtype not in WORD_FORMATS:
        assert columns is None
        np.testing.assert_array_equal(stored, exact[2:17].astype(np.float32))
        return
    columns = columns.cpu().numpy()
    assert sorted(columns) == list(range(cols)) and not np.array_equal(columns, np.arange(cols))
    np.testing.assert_array_equal(stored, exact[2:17][:, columns].astype(np.float32))


def test_device_matrix_reads_any_dtype_and_rejects_what_it_cannot():
    rng = np.random.default_rng(7)
    raw, exact, _ = weight(rng, 5, 64, T.BF16)
    as_words = device_matrix(raw.view(np.uint16), T.BF16, (5, 64), DEVICE)  # the reader's other BF16 form
    np.testing.assert_array_equal(dequantize_rows(as_words).cpu().numpy(), exact.astype(np.float32))
    raw = gguf_raw(rng.standard_normal((5, 64)).astype(np.float32), T.F16)
    as_bytes = device_matrix(raw.view(np.uint8), T.F16, (5, 64), DEVICE)
    np.testing.assert_array_equal(dequantize_rows(as_bytes).cpu().numpy(), raw.astype(np.float32))
    with pytest.raises(HybridInferError, match="Q8_0, Q4_0, Q4_1, .*not Q2_K"):
        device_matrix(np.zeros((2, 84), np.uint8), T.Q2_K, (2, 256), DEVICE)
    with pytest.raises(HybridInferError, match="expected 68"):
        device_matrix(np.zeros((2, 70), np.uint8), T.Q8_0, (2, 64), DEVICE)


# ---- the torch twins against numpy ---------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_reference_matvec(qtype, small_chunks):
    rng = np.random.default_rng(2024)
    cols = width(qtype, 160)
    _, exact, m = weight(rng, 70, cols, qtype)
    for tokens in (1, 3):
        x = rng.standard_normal((tokens, cols)).astype(np.float32)
        assert_close(reference.matvec(m, tensor(x)), x @ exact.T, np.abs(x) @ np.abs(exact).T)


MIXED_FORMATS = [(T.Q4_0, T.Q8_0, T.F16), (T.Q4_1, T.BF16, T.F32), (T.Q8_0, T.Q4_1, T.Q4_0), (T.Q5_0, T.Q5_1, T.Q4_0),
                 (T.Q4_K, T.Q6_K, T.Q5_1), (T.Q5_K, T.Q5_0, T.Q4_K), (T.Q6_K, T.Q4_K, T.Q5_K)]


@pytest.mark.parametrize("qtypes", MIXED_FORMATS, ids=lambda qs: "-".join(q.name for q in qs))
def test_reference_hot_ffn(qtypes, small_chunks):
    rng = np.random.default_rng(31)
    n_hot, n_embd = 70, max(width(q, 160) for q in qtypes)
    (_, gate, g_m), (_, up, u_m), (_, down_t, d_m) = (weight(rng, n_hot, n_embd, q) for q in qtypes)
    for threshold, masked in ((0.0, True), (0.0, False), (0.4, True), (0.4, False)):
        x = (rng.standard_normal(n_embd) / np.sqrt(n_embd)).astype(np.float32)
        mask = rng.random(n_hot) < 0.6 if masked else None
        _, out, fired, scale = ffn_expected(gate, up, down_t, x[None], mask, threshold)
        got, count = reference.hot_ffn(g_m, u_m, d_m, tensor(x), None if mask is None else tensor(mask), threshold)
        assert count.dtype == torch.int64 and count.shape == () and count.device.type == got.device.type
        assert int(count) == fired[0] and 0 < fired[0] < n_hot
        assert_close(got, out[0], scale[0])


@pytest.mark.parametrize("masked", [True, False])
def test_reference_batched_ffn(masked, small_chunks):
    rng = np.random.default_rng(99)
    tokens, n_hot, n_embd = 3, 37, 96
    (_, gate, g_m), (_, up, u_m), (_, down_t, d_m) = (weight(rng, n_hot, n_embd, q) for q in (T.Q4_1, T.F16, T.Q8_0))
    x = (rng.standard_normal((tokens, n_embd)) / np.sqrt(n_embd)).astype(np.float32)
    mask = rng.random((tokens, n_hot)) < 0.6 if masked else None
    for threshold in (0.0, 0.4):
        h, out, fired, scale = ffn_expected(gate, up, down_t, x, mask, threshold)
        hidden = reference.hidden_dense(g_m, u_m, tensor(x), None if mask is None else tensor(mask), threshold)
        h_scale = (np.abs(x) @ np.abs(gate).T) * (np.abs(x) @ np.abs(up).T)
        assert_close(hidden, h, h_scale)
        assert ((hidden.cpu().numpy() != 0).sum(axis=1) == fired).all()
        assert_close(reference.down_t_product(d_m, hidden), out, scale)


def test_reference_with_no_hot_neurons():
    rng = np.random.default_rng(5)
    raw = gguf_raw(rng.standard_normal((8, 64)).astype(np.float32), T.Q4_0)
    m = device_matrix(raw, T.Q4_0, (8, 64), DEVICE, rows=np.zeros(0, dtype=np.int64))
    x = tensor(rng.standard_normal((2, 64)).astype(np.float32))
    assert reference.matvec(m, x).shape == (2, 0)
    out, count = reference.hot_ffn(m, m, m, x[0], tensor(np.zeros(0, dtype=bool)), 0.0)
    assert out.shape == (64,) and not out.any() and int(count) == 0
    hidden = reference.hidden_dense(m, m, x, None, 0.0)
    assert hidden.shape == (2, 0)
    product = reference.down_t_product(m, hidden)
    assert product.shape == (2, 64) and not product.any()


# ---- the Triton kernels against the twins --------------------------------------------------------------------

@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_triton_matvec(tk, kernel_common, qtype, monkeypatch):
    rng = np.random.default_rng(4321)
    # 37 rows: a tile and a partial one; 160 columns: a partial column step only; 544: whole steps (2 of 8 Q4 blocks)
    # and a partial one; (2, 160): the twin's batch matmul; then split-K: shares of one column step each
    cases = ((37, 160, 1), (1, 64, 1), (70, 544, 1), (37, 160, 2), (37, 544, 1))
    for case, (rows, cols, tokens) in enumerate(cases):
        if case == len(cases) - 1:
            monkeypatch.setattr(kernel_common, "MIN_SPLIT_STEPS", 1)
            assert kernel_common.split_k(rows, width(qtype, cols), qtype) < width(qtype, cols)
        cols = width(qtype, cols)
        _, exact, m = weight(rng, rows, cols, qtype)
        x = rng.standard_normal((tokens, cols)).astype(np.float32)
        expected = reference.matvec(m, tensor(x)).cpu().numpy()
        assert_close(tk.matvec(m, tensor(x)), expected, np.abs(x) @ np.abs(exact).T)


@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_triton_hot_ffn(tk, hot_ffn_kernels, qtype, monkeypatch):
    rng = np.random.default_rng(777)
    n_hot, n_embd = 37, width(qtype, 160)
    (_, gate, g_m), (_, up, u_m), (_, down_t, d_m) = (weight(rng, n_hot, n_embd, qtype) for _ in range(3))
    for threshold, masked in ((0.0, True), (0.0, False), (0.4, True), (0.4, False)):
        x = (rng.standard_normal(n_embd) / np.sqrt(n_embd)).astype(np.float32)
        mask = rng.random(n_hot) < 0.6 if masked else None
        _, _, fired, scale = ffn_expected(gate, up, down_t, x[None], mask, threshold)
        args = (g_m, u_m, d_m, tensor(x), None if mask is None else tensor(mask), threshold)
        out, count = tk.hot_ffn(*args)
        expected, expected_count = reference.hot_ffn(*args)
        assert count.dtype == torch.int64 and count.shape == () and count.device.type == out.device.type
        assert int(count) == int(expected_count) == fired[0] and 0 < fired[0] < n_hot
        assert_close(out, expected.cpu().numpy(), scale[0])
    monkeypatch.setattr(hot_ffn_kernels, "TARGET_PROGRAMS", 1)  # one S3 share of all the rows (several chunks, steps)
    monkeypatch.setattr(hot_ffn_kernels, "S3_MAX_SHARES", 1)
    monkeypatch.setattr(hot_ffn_kernels, "CHUNK", 16)  # several S2 programs, several S3 chunks
    monkeypatch.setattr(hot_ffn_kernels, "S3_COLUMNS", 64)  # several S3 column tiles (Q4: 2 units a tile, Q8_0: 4)
    s3_name = "_s3_words_kernel" if qtype in WORD_FORMATS else "_s3_kernel"
    s2, s3 = LaunchSpy(hot_ffn_kernels._s2_kernel), LaunchSpy(getattr(hot_ffn_kernels, s3_name))
    monkeypatch.setattr(hot_ffn_kernels, "_s2_kernel", s2)
    monkeypatch.setattr(hot_ffn_kernels, s3_name, s3)
    out, count = tk.hot_ffn(*args)
    assert s2.grids == [(3,)] and s3.grids[0][0] > 1 and s3.grids[0][1] == 1  # the settings reached hot_ffn
    assert int(count) == fired[0]
    assert_close(out, expected.cpu().numpy(), scale[0])


@pytest.mark.parametrize("qtypes", MIXED_FORMATS, ids=lambda qs: "-".join(q.name for q in qs))
def test_triton_hot_ffn_mixed_formats(tk, qtypes):
    rng = np.random.default_rng(8)
    n_hot, n_embd = 70, max(width(q, 96) for q in qtypes)
    (_, gate, g_m), (_, up, u_m), (_, down_t, d_m) = (weight(rng, n_hot, n_embd, q) for q in qtypes)
    x = (rng.standard_normal(n_embd) / np.sqrt(n_embd)).astype(np.float32)
    mask = rng.random(n_hot) < 0.5
    _, out, fired, scale = ffn_expected(gate, up, down_t, x[None], mask, 0.1)
    got, count = tk.hot_ffn(g_m, u_m, d_m, tensor(x), tensor(mask), 0.1)
    assert int(count) == fired[0] and 0 < fired[0] < mask.sum()
    assert_close(got, out[0], scale[0])


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_rows_that_do_not_fire_are_not_read(kernels, request):
    """NaN in the up and down_t rows of the neurons that do not fire must not reach the output (S2 and S3)."""
    ops = reference if kernels == "torch" else request.getfixturevalue("tk")
    rng = np.random.default_rng(11)
    n_hot, n_embd = 37, 96
    gate, up, down_t = (rng.standard_normal((n_hot, n_embd)).astype(np.float32) for _ in range(3))
    x = (rng.standard_normal(n_embd) / np.sqrt(n_embd)).astype(np.float32)
    mask = rng.random(n_hot) < 0.7
    _, out, fired, scale = ffn_expected(gate.astype(np.float64), up.astype(np.float64), down_t.astype(np.float64),
                                        x[None], mask, 0.2)
    idle = ~((x @ gate.T >= 0.2) & mask)
    assert 0 < idle.sum() < n_hot
    up[idle], down_t[idle] = np.nan, np.nan
    g_m, u_m, d_m = (device_matrix(w, T.F32, (n_hot, n_embd), DEVICE) for w in (gate, up, down_t))
    got, count = ops.hot_ffn(g_m, u_m, d_m, tensor(x), tensor(mask), 0.2)
    assert int(count) == fired[0] == (~idle).sum()
    assert_close(got, out[0], scale[0])


def test_triton_with_no_hot_neurons(tk):
    rng = np.random.default_rng(6)
    raw = gguf_raw(rng.standard_normal((8, 64)).astype(np.float32), T.Q4_1)
    m = device_matrix(raw, T.Q4_1, (8, 64), DEVICE, rows=np.zeros(0, dtype=np.int64))
    x = tensor(rng.standard_normal((1, 64)).astype(np.float32))
    assert tk.matvec(m, x).shape == (1, 0)
    out, count = tk.hot_ffn(m, m, m, x[0], None, 0.0)
    assert out.shape == (64,) and not out.any() and int(count) == 0 and count.dtype == torch.int64


def test_upload_decodes_what_the_kernels_do_not_read():
    """The GPU side's upload: a type the kernels read as stored goes as its bytes, any other as F32 values."""
    from hybridinfer.hybrid.gpu_side import upload

    rng = np.random.default_rng(9)
    blocks = rng.integers(0, 256, (4 * 2, 84), dtype=np.uint8)  # Q2_K: no kernel reads it
    blocks[:, 80:84] = np.full((4 * 2, 2), 0.01, np.float16).view(np.uint8)  # its f16 d and dmin
    m = upload(GGUFTensor("w", T.Q2_K, (4, 512), blocks.reshape(4, -1)), torch.device(DEVICE))
    assert m.qtype == T.F32 and m.nbytes == 4 * 4 * 512
    expected = quants.dequantize(blocks.reshape(4, -1), T.Q2_K).reshape(4, 512)
    assert np.abs(expected).max() > 0
    np.testing.assert_array_equal(dequantize_rows(m).cpu().numpy(), expected)
    for qtype in GPU_NATIVE_TYPES:
        raw, exact, _ = weight(rng, 3, width(qtype, 64), qtype)
        m = upload(GGUFTensor("w", qtype, exact.shape, raw), torch.device(DEVICE), rows=np.array([2, 0]))
        assert m.qtype == qtype and m.nbytes == raw[[2, 0]].nbytes
        np.testing.assert_array_equal(dequantize_rows(m).cpu().numpy(), exact[[2, 0]].astype(np.float32))


def test_the_memory_model_counts_what_the_gpu_side_holds():
    """Gate and up rows as uploaded (`upload`); a split layer's down_t rows as the CPU side's transposed down
    projection (`runtime/weights.transpose`: a K-quant re-quantized to its transpose type, F32 where the CPU kernels
    do not read the format or the transposed rows are not whole blocks)."""
    from hybridinfer.hybrid.placement.memory_model import device_bytes, down_t_bytes
    from hybridinfer.runtime.weights import transpose

    rng = np.random.default_rng(10)
    for qtype in GPU_NATIVE_TYPES:
        for rows in (4, 64):
            raw, exact, m = weight(rng, rows, width(qtype, 64), qtype)
            t = GGUFTensor("w", qtype, exact.shape, raw)
            assert device_bytes(t) == m.nbytes == raw.nbytes
            assert down_t_bytes(t) == transpose(t).nbytes, (qtype.name, rows)
    t = GGUFTensor("w", T.Q2_K, (4, 256), np.zeros((4, 84), np.uint8))
    assert device_bytes(t) == down_t_bytes(t) == 4 * 4 * 256


# ---- choosing the kernels ------------------------------------------------------------------------------------

def test_kernels_for(monkeypatch):
    monkeypatch.delenv("HYBRIDINFER_GPU_KERNELS", raising=False)
    assert kernels_for("cpu") is reference and kernels_for(torch.device("cpu")) is reference
    assert kernels_for("cuda:0", "torch") is reference
    monkeypatch.setenv("HYBRIDINFER_GPU_KERNELS", "torch")
    assert kernels_for("cuda") is reference
    monkeypatch.setenv("HYBRIDINFER_GPU_KERNELS", "cutlass")
    with pytest.raises(HybridInferError, match="unknown GPU kernels 'cutlass'.*choose triton or torch"):
        kernels_for("cuda")
    with pytest.raises(HybridInferError, match="choose triton or torch"):
        kernels_for("cpu", "numba")


def test_kernels_for_triton(monkeypatch, tk):
    monkeypatch.delenv("HYBRIDINFER_GPU_KERNELS", raising=False)
    assert kernels_for(torch.device("cuda")) is tk and kernels_for("cuda:1") is tk
    assert kernels_for("cpu", "triton") is tk
    monkeypatch.setenv("HYBRIDINFER_GPU_KERNELS", "triton")
    assert kernels_for("cpu") is tk
    monkeypatch.setenv("HYBRIDINFER_GPU_KERNELS", "torch")
    assert kernels_for("cuda", "triton") is tk


def test_importing_the_package_does_not_import_triton():
    code = "import sys, hybridinfer.gpu, hybridinfer.gpu.reference; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False"


def test_the_gpu_check_imports_without_pydantic():
    """`make gpu-check` runs on a machine with torch and triton but without the server's pydantic and FastAPI: its
    script and the CLI the GPU tests import must not pull them in (only `serve` does, when it runs)."""
    code = ("import sys; sys.modules['pydantic'] = sys.modules['fastapi'] = None; "
            "import tools.gpu_check, hybridinfer.cli.main; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def _compile_check(*args: str) -> subprocess.CompletedProcess:
    return run_compile_tool("compile_check", *args)


def test_the_kernels_compile_for_sm_90(tk):
    """Compiled (not interpreted) for an H100/H200 without a GPU: every format's GEMV, the S2, S3, gate_up and the
    GEMV and gate_up with the RMSNorm prologue of the format with the most fields; the interpreter does not catch what
    only compiling does (e.g. a non-constexpr global)."""
    skip_without_nvidia_tools("ptxas")
    every_format = [t.name for t in GPU_NATIVE_TYPES]
    for kernels, formats in (("gemv", every_format), ("s2,s3,gate_up,norm_gemv,norm_gate_up,stage_gemv", ["Q5_K"])):
        result = _compile_check("--arch", "90", "--kernels", kernels, *formats)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stdout.strip().splitlines()
        assert [line.split()[:2] for line in lines] == [[f, k] for f in formats for k in kernels.split(",")]


def _word_kernel_loops(*formats: str) -> list[str]:
    """compile_check's lines for every kernel of `formats` (word formats), checked to be SASS and to have the weight
    loops each kernel has (S2, gate_up: gate and up)."""
    skip_without_nvidia_tools("ptxas", "cuobjdump")
    from hybridinfer.gpu.compile_check import KERNELS

    result = _compile_check("--arch", "90", *formats)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:3] for line in lines] == [[f, k, "sass"] for f in formats for k in KERNELS]
    for line in lines:
        loops = re.findall(r"loop ([\d.]+)/w", line)
        assert len(loops) == (2 if line.split()[1] in ("s2", "gate_up", "norm_gate_up") else 1), line
    return lines


def test_the_word_kernels_take_at_most_4_instructions_per_weight(tk):
    """The Q4_0, Q4_1 and Q8_0 GEMV, S2 and gate_up (gate and up loops) and S3 inner loops, and the GEMV and gate_up
    with the RMSNorm prologue, compiled for sm_90 and counted in their SASS by compile_check: at most 4 instructions
    per weight, one FFMA per weight or a little more."""
    for line in _word_kernel_loops("Q8_0", "Q4_0", "Q4_1"):
        per_weight = [float(v) for v in re.findall(r"loop ([\d.]+)/w", line)]
        ffma = [float(v) for v in re.findall(r"ffma ([\d.]+)/w", line)]
        assert all(v <= 4.0 for v in per_weight), line
        assert all(1.0 <= v <= 1.3 for v in ffma), line  # one multiply-add a weight: the loop was not unrolled


def test_the_q5_word_kernels_take_at_most_5_5_instructions_per_weight(tk):
    """Q5_0 and Q5_1 as word formats (their fifth bits merged into 5-bit bytes a word, `_five_bit_words`), every
    kernel: at most 5.5 instructions per weight (each element decoded from its own block's fields took 20 to 25; at
    HBM speed a Q5_0 weight, 0.6875 bytes, allows about 6), no spill."""
    for line in _word_kernel_loops("Q5_0", "Q5_1"):
        per_weight = [float(v) for v in re.findall(r"loop ([\d.]+)/w", line)]
        ffma = [float(v) for v in re.findall(r"ffma ([\d.]+)/w", line)]
        assert all(v <= 5.5 for v in per_weight), line
        assert all(1.0 <= v <= 1.3 for v in ffma), line
        assert " stack 0 " in line, line


def test_the_k_quant_row_loops_read_words_at_under_8_instructions_per_weight(tk):
    """Q4_K, Q5_K and Q6_K's GEMV, S2 and gate_up loops (super-blocks as int32 words, scales decoded once per
    sub-block) compiled for sm_90: at most 8 instructions per weight (each element decoded from its own block's
    fields, as S3 still does, took 18 to 23), no spill."""
    skip_without_nvidia_tools("ptxas", "cuobjdump")
    result = _compile_check("--arch", "90", "--kernels", "gemv,s2,gate_up,norm_gemv", "Q4_K", "Q5_K", "Q6_K")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [[f, k] for f in ("Q4_K", "Q5_K", "Q6_K")
                                                    for k in ("gemv", "s2", "gate_up", "norm_gemv")]
    for line in lines:
        per_weight = [float(v) for v in re.findall(r"loop ([\d.]+)/w", line)]
        assert per_weight and all(v <= 8.0 for v in per_weight), line
        assert " stack 0 " in line, line


def test_the_loop_count_finds_the_innermost_loops():
    """compile_check's loop finder on a made-up SASS listing: an outer loop holding two inner ones, and a retry loop
    without FFMA that is not a weight loop."""
    from hybridinfer.gpu.compile_check import inner_loops, weight_loops

    listing = ["IADD3 R1, R1, 0x1", "LDG.E.128 R4, desc[UR4][R2.64]", "FFMA R8, R4, R5, R8", "FFMA R8, R6, R7, R8",
               "@P0 BRA 0x10", "FADD R9, R9, R8", "LDG.E R4, desc[UR4][R2.64]", "FFMA R8, R4, R5, R8",
               "@!P1 BRA 0x50", "SHFL.BFLY PT, R9, R9, 0x1, 0x1f", "@P2 BRA 0x90", "@P3 BRA 0x0"]
    instructions = [(16 * k, text) for k, text in enumerate(listing)]
    loops = inner_loops(instructions, weights=2)
    assert [loop.instructions for loop in loops] == [4, 4, 2]
    assert loops[0].counts["FFMA"] == 2 and loops[0].per_weight == 2.0
    assert [loop.instructions for loop in weight_loops(loops)] == [4, 4]
