"""The fused GPU kernels (`gpu/triton_kernels.py`) against their torch twins (`gpu/reference.py`), and the twins
against numpy: the GEMV's epilogues (ReLU, threshold, residual add), the dense FFN's gate + up + activation kernel,
and the split FFN's S2/S3 with a mask over every neuron, the fired count added on the device and the residual add.
Every weight format the kernels read, split-K in one pass (a tile's last program adds the shares) and not.
Triton runs under TRITON_INTERPRET=1 on CPU tensors (`test_gpu_kernels.py` sets it), or compiled on cuda with
HYBRIDINFER_TEST_DEVICE=cuda."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from hybridinfer.gpu import reference
from hybridinfer.gpu.weights import device_matrix
from hybridinfer.model_file.weight_formats import GPU_NATIVE_TYPES
from test_gpu_kernels import (DEVICE, MIXED_FORMATS, RTOL, assert_close, ffn_expected, kernel_common,  # noqa: F401
                              tensor, tk, weight, width)

# split_k's settings (`kernel_common`) for one share of the columns, and for split-K (several shares, whole steps)
SPLITS = ({"TARGET_PROGRAMS": 1}, {"MIN_SPLIT_STEPS": 1})
ACTIVATIONS = {"silu": lambda g, t: g / (1 + np.exp(-g)),
               "gelu": lambda g, t: 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3))),
               "relu": lambda g, t: np.where(g >= 0, g, 0.0),
               "fatrelu": lambda g, t: np.where(g >= t, g, 0.0)}


def split_cases(kernel_common, monkeypatch, rows, cols, *qtypes):
    """Yield twice, for one share and for several (`SPLITS`)."""
    for split, settings in enumerate(SPLITS):
        monkeypatch.undo()
        for name, value in settings.items():
            monkeypatch.setattr(kernel_common, name, value)
        assert (kernel_common.split_k(rows, cols, *qtypes) < cols) == bool(split)
        yield


@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_gemv_epilogues(tk, kernel_common, qtype, monkeypatch):
    rng = np.random.default_rng(2024)
    rows, cols = 37, width(qtype, 544)
    for _ in split_cases(kernel_common, monkeypatch, rows, cols, qtype):
        _, exact, m = weight(rng, rows, cols, qtype)
        x = rng.standard_normal((1, cols)).astype(np.float32)
        scores, scale = x @ exact.T, np.abs(x) @ np.abs(exact).T
        for ops in (reference, tk):
            assert_close(ops.matvec_relu(m, tensor(x)), np.maximum(scores, 0), scale)
            residual = rng.standard_normal((1, rows)).astype(np.float32)
            out = tensor(residual.copy())  # on the CPU device a tensor would share the array
            assert ops.add_matvec(out, m, tensor(x), 0.75) is out
            assert_close(out, residual + 0.75 * scores, 0.75 * scale + np.abs(residual))
            threshold = float(np.median(scores))
            at_least = ops.matvec_at_least(m, tensor(x), threshold).cpu().numpy()
            clear = np.abs(scores - threshold) > RTOL * scale  # not within rounding of the threshold
            assert at_least.dtype == bool and at_least.shape == (1, rows)
            assert np.array_equal(at_least[clear], (scores >= threshold)[clear]) and 0 < at_least.sum() < rows
            # into a given buffer, copying a vector on the side (the split FFN's one copy down to the host)
            side = rng.standard_normal((1, 300)).astype(np.float32)
            into, staged = torch.zeros((1, rows), dtype=torch.bool, device=DEVICE), torch.zeros(300, device=DEVICE)
            assert ops.matvec_at_least(m, tensor(x), threshold, into, (tensor(side), staged)) is into
            assert torch.equal(into.cpu(), torch.as_tensor(at_least)) and np.array_equal(staged.cpu().numpy(), side[0])
        assert_close(tk.matvec_relu(m, tensor(x)), reference.matvec_relu(m, tensor(x)).cpu().numpy(), scale)
    assert not kernel_common._COUNTERS[torch.device(DEVICE)].any()  # each split launch set its counters back to 0


@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_gate_up(tk, kernel_common, qtype, monkeypatch):
    rng = np.random.default_rng(99)
    rows, cols = 37, width(qtype, 544)
    for _ in split_cases(kernel_common, monkeypatch, rows, cols, qtype, qtype):
        (_, gate, g_m), (_, up, u_m) = (weight(rng, rows, cols, qtype) for _ in range(2))
        x = (rng.standard_normal((1, cols)) / np.sqrt(cols)).astype(np.float32)
        g, u = x @ gate.T, x @ up.T
        scale = (np.abs(x) @ np.abs(gate).T) * (np.abs(x) @ np.abs(up).T)
        for activation, act in ACTIVATIONS.items():
            threshold = 0.3 if activation == "fatrelu" else 0.0
            expected = act(g, threshold) * u
            clear = np.abs(g - threshold) > RTOL * scale if "relu" in activation else True
            for ops in (reference, tk):
                h = ops.gate_up(g_m, u_m, tensor(x), activation, threshold)
                assert_close(h * torch.as_tensor(clear).to(DEVICE), expected * clear, scale)
            assert (expected != 0).sum() > rows // 4


@pytest.mark.parametrize("qtypes", MIXED_FORMATS, ids=lambda qs: "-".join(q.name for q in qs))
def test_gate_up_mixed_formats(tk, kernel_common, qtypes, monkeypatch):
    rng = np.random.default_rng(5)
    rows, cols = 70, min(width(q, 544) for q in qtypes[:2])  # 512 where a K-quant needs whole super-blocks
    monkeypatch.setattr(kernel_common, "MIN_SPLIT_STEPS", 1)
    (_, gate, g_m), (_, up, u_m) = (weight(rng, rows, cols, q) for q in qtypes[:2])
    x = (rng.standard_normal((1, cols)) / np.sqrt(cols)).astype(np.float32)
    assert kernel_common.split_k(rows, cols, *qtypes[:2]) < cols
    scale = (np.abs(x) @ np.abs(gate).T) * (np.abs(x) @ np.abs(up).T)
    assert_close(tk.gate_up(g_m, u_m, tensor(x), "silu", 0.0), ACTIVATIONS["silu"](x @ gate.T, 0) * (x @ up.T), scale)
    # with the norm in the prologue (Q4_1 beside another format: x times the weight staged, read by both loops)
    norm = (1 + 0.5 * rng.standard_normal(cols)).astype(np.float32) / np.sqrt(cols)
    normed = rms_normed(x * 5, norm, 1e-6)
    scale = (np.abs(normed) @ np.abs(gate).T) * (np.abs(normed) @ np.abs(up).T)
    assert_close(tk.gate_up(g_m, u_m, tensor(x * 5), "silu", 0.0, (tensor(norm), 1e-6)),
                 ACTIVATIONS["silu"](normed @ gate.T, 0) * (normed @ up.T), scale)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q8_0, T.F16, T.Q5_K], ids=lambda q: q.name)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_hot_ffn_over_a_mask_of_every_neuron(kernels, qtype, request):
    """S2 reads the mask over every neuron through the hot index, adds its fired count to a running total, and S3
    adds the output to the residual stream, all in the same two kernels."""
    ops = reference if kernels == "torch" else request.getfixturevalue("tk")
    rng = np.random.default_rng(31)
    n_ff, n_hot, n_embd, threshold = 90, 37, width(qtype, 160), 0.1
    (_, gate, g_m), (_, up, u_m), (_, down_t, d_m) = (weight(rng, n_hot, n_embd, qtype) for _ in range(3))
    hot = np.sort(rng.choice(n_ff, n_hot, replace=False))
    mask = rng.random(n_ff) < 0.6
    x = (rng.standard_normal(n_embd) / np.sqrt(n_embd)).astype(np.float32)
    _, out, fired, scale = ffn_expected(gate, up, down_t, x[None], mask[hot], threshold)
    assert 0 < fired[0] < n_hot
    running = torch.full((), 5, dtype=torch.int64, device=DEVICE)
    residual = rng.standard_normal(n_embd).astype(np.float32)
    into = tensor(residual.copy())
    got, count = ops.hot_ffn(g_m, u_m, d_m, tensor(x), tensor(mask), threshold, mask_index=tensor(hot),
                             fired=running, residual=into, scale=0.5)
    assert got is into and count is running and int(running) == 5 + fired[0]
    assert_close(got, residual + 0.5 * out[0], 0.5 * scale[0] + np.abs(residual))
    plain, count = ops.hot_ffn(g_m, u_m, d_m, tensor(x), tensor(mask[hot]), threshold)
    assert int(count) == fired[0]
    assert_close(plain, out[0], scale[0])


def test_the_dense_kernels_with_no_rows(tk):
    rng = np.random.default_rng(6)
    m = device_matrix(rng.standard_normal((8, 64)).astype(np.float32), T.F32, (8, 64), DEVICE,
                      rows=np.zeros(0, dtype=np.int64))
    x = tensor(rng.standard_normal((1, 64)).astype(np.float32))
    assert tk.gate_up(m, m, x, "silu", 0.0).shape == (1, 0) and tk.matvec_relu(m, x).shape == (1, 0)


def rms_normed(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """numpy's RMSNorm of the rows of x (float64)."""
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * weight


@pytest.mark.parametrize("qtype", GPU_NATIVE_TYPES, ids=lambda q: q.name)
def test_the_norm_in_the_prologue(tk, kernel_common, qtype, monkeypatch):
    """RMSNorm folded into the kernel that reads its output: the Q/K/V GEMV (`norm_matvec`), the dense FFN's gate_up
    and fc2's staging copy (`matvec_at_least`'s copy_norm), each against its twin and numpy, split-K and not."""
    rng = np.random.default_rng(3131)
    rows, cols, eps = 37, width(qtype, 544), 1e-5
    for _ in split_cases(kernel_common, monkeypatch, rows, cols, qtype, qtype):
        (_, exact, m), (_, up, u_m) = (weight(rng, rows, cols, qtype) for _ in range(2))
        x = (3 * rng.standard_normal((1, cols)) + 0.5).astype(np.float32)  # far from unit RMS
        norm = ((1 + 0.5 * rng.standard_normal(cols)) / np.sqrt(cols)).astype(np.float32)  # SiLU within exp range
        normed = rms_normed(x, norm, eps)
        scores, scale = normed @ exact.T, np.abs(normed) @ np.abs(exact).T
        for ops in (reference, tk):
            assert_close(ops.norm_matvec(m, tensor(x), tensor(norm), eps), scores, scale)
            g, u = normed @ exact.T, normed @ up.T
            h = ops.gate_up(m, u_m, tensor(x / 8), "silu", 0.0, (tensor(norm), eps))  # the norm undoes the / 8
            assert_close(h, ACTIVATIONS["silu"](g, 0) * u, scale * (np.abs(normed) @ np.abs(up).T))
            staged = torch.zeros(cols, device=DEVICE)
            threshold = float(np.median(scores))
            ops.matvec_at_least(m, tensor(normed.astype(np.float32)), threshold, None, (tensor(x), staged),
                                (tensor(norm), eps))
            assert_close(staged, normed[0], np.abs(normed[0]))
        assert_close(tk.norm_matvec(m, tensor(x), tensor(norm), eps),
                     reference.norm_matvec(m, tensor(x), tensor(norm), eps).cpu().numpy(), scale)
    assert not kernel_common._COUNTERS[torch.device(DEVICE)].any()


def test_a_gemv_norms_its_input_or_its_copy_not_both(kernel_common):
    from hybridinfer.gpu.gemv_kernels import _gemv

    rng = np.random.default_rng(12)
    m = device_matrix(rng.standard_normal((8, 64)).astype(np.float32), T.F32, (8, 64), DEVICE)
    x, norm = tensor(rng.standard_normal((1, 64)).astype(np.float32)), tensor(np.ones(64, np.float32))
    with pytest.raises(ValueError, match="not both"):
        _gemv(m, x, torch.empty((1, 8), device=DEVICE), kernel_common._STORE, 0.0, (x, torch.empty(64, device=DEVICE)),
              norm=(norm, 1e-5), copy_norm=(norm, 1e-5))
