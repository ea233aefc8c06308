"""The decoder-layer numba kernels (`cpu_ops.py`, `cpu_layer.py`) against their twins: torch's reference pieces
(`model.py`) and the numpy twins (`reference.py`), on fresh random inputs, every weight format."""

import zlib

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from hybridinfer.kernels.block_args import FFNWeights, SparseFFNScratch
from hybridinfer.kernels import cpu_layer, cpu_ops, reference
from hybridinfer.kernels.cpu_quant import INT8_ERROR_BOUND, activation_buffers, prepare
from hybridinfer.kernels.packed import pack, to_gguf_bytes
from hybridinfer.model_file.weight_formats import CPU_NATIVE_TYPES, FORMATS
from hybridinfer.reference.model import apply_rope, rms_norm
from kv_states import kv_state


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))  # the same every run


def random_matrix(rng, qtype, shape):
    """(packed, float32 values as gguf decodes them)."""
    values = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
    raw = values if qtype == T.F32 else quants.quantize(values, qtype)
    return pack((raw, qtype, shape)), reference.dequantized(raw, qtype, shape)


def test_rms_norm_matches_reference(rng):
    x = rng.standard_normal((3, 96), dtype=np.float32) * 3
    weight = rng.standard_normal(96, dtype=np.float32)
    out = np.empty_like(x)
    cpu_ops.rms_norm(x, weight, 1e-5, out)
    expected = rms_norm(torch.from_numpy(x), torch.from_numpy(weight), 1e-5).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rope_dim", [16, 8])
def test_rope_matches_reference(rng, rope_dim):
    x = rng.standard_normal((4, 3, 16), dtype=np.float32)
    angles = np.outer(np.arange(20), 10000.0 ** (-np.arange(0, rope_dim, 2) / rope_dim))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    expected = apply_rope(torch.from_numpy(x), torch.from_numpy(cos[5:9]), torch.from_numpy(sin[5:9])).numpy()
    cpu_ops.rope(x, cos, sin, np.arange(5, 9))
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens,start,n_head,n_kv", [(1, 0, 4, 4), (1, 17, 6, 2), (5, 9, 4, 1), (7, 0, 3, 3)])
def test_attention_matches_reference(rng, tokens, start, n_head, n_kv):
    """One sequence's new positions start..start+T-1."""
    head_dim, n_ctx = 16, 40
    q = rng.standard_normal((tokens, n_head, head_dim), dtype=np.float32)
    keys = rng.standard_normal((1, n_kv, n_ctx, head_dim), dtype=np.float32) * 2
    values = rng.standard_normal((1, n_kv, n_ctx, head_dim), dtype=np.float32)
    positions, sequences = np.arange(start, start + tokens), np.zeros(tokens, np.int64)
    out = np.empty_like(q)
    cpu_ops.attention(q, kv_state(keys, values, positions, sequences, n_head), out)
    np.testing.assert_allclose(out, reference.attention(q, keys, values, positions, sequences), rtol=1e-4, atol=1e-5)


def test_attention_of_several_sequences_is_each_ones_alone(rng):
    """One query for each of four sequences at their own positions: the reference's result, and bit for bit what
    each query gives alone (parallel decoding answers as one sequence decoding does)."""
    n_seq, n_head, n_kv, head_dim, n_ctx = 4, 6, 2, 16, 40
    q = rng.standard_normal((n_seq, n_head, head_dim), dtype=np.float32)
    keys = rng.standard_normal((n_seq, n_kv, n_ctx, head_dim), dtype=np.float32) * 2
    values = rng.standard_normal((n_seq, n_kv, n_ctx, head_dim), dtype=np.float32)
    positions, sequences = np.array([3, 0, 39, 17]), np.array([2, 0, 3, 1])
    out = np.empty_like(q)
    cpu_ops.attention(q, kv_state(keys, values, positions, sequences, n_head), out)
    np.testing.assert_allclose(out, reference.attention(q, keys, values, positions, sequences), rtol=1e-4, atol=1e-5)
    for t in range(n_seq):
        alone = np.empty_like(q[t:t + 1])
        one = slice(sequences[t], sequences[t] + 1)
        cpu_ops.attention(q[t:t + 1], kv_state(keys[one], values[one], positions[t:t + 1], [0], n_head), alone)
        np.testing.assert_array_equal(alone, out[t:t + 1])


def test_ffn_activations_and_row_selection(rng):
    gate = rng.standard_normal((2, 50), dtype=np.float32)
    up = rng.standard_normal((2, 50), dtype=np.float32)
    out = np.empty_like(gate)
    cpu_ops.silu_times(gate, up, out)
    np.testing.assert_allclose(out, torch.nn.functional.silu(torch.from_numpy(gate)).numpy() * up, rtol=1e-5, atol=1e-6)
    cpu_ops.fatrelu_times(gate, up, np.float32(0.3), out)
    np.testing.assert_array_equal(out, reference.fatrelu(gate, 0.3) * up)
    selected = np.empty(50, np.int64)
    candidates = rng.permutation(100)[:50].astype(np.int64)
    none = np.zeros(0, np.float32)
    k = cpu_ops.select_rows(gate[0], np.float32(0.3), candidates, selected, False, none)
    np.testing.assert_array_equal(selected[:k], candidates[gate[0] >= 0.3])
    k = cpu_ops.select_rows(gate[0], np.float32(0.3), np.zeros(0, np.int64), selected, False, none)
    np.testing.assert_array_equal(selected[:k], np.flatnonzero(gate[0] >= 0.3))
    k = cpu_ops.select_rows(gate[0], np.float32(0.3), np.zeros(0, np.int64), selected, True, none)  # CATS: |value|
    np.testing.assert_array_equal(selected[:k], np.flatnonzero(np.abs(gate[0]) >= 0.3))
    scales = rng.uniform(0.2, 3.0, 50).astype(np.float32)  # CHESS: |value| times each neuron's scale
    k = cpu_ops.select_rows(gate[0], np.float32(0.3), np.zeros(0, np.int64), selected, True, scales)
    np.testing.assert_array_equal(selected[:k], np.flatnonzero(np.abs(gate[0]) * scales >= 0.3))
    assert k != np.count_nonzero(np.abs(gate[0]) >= 0.3)
    for magnitude, weights in ((False, none), (True, none), (True, scales)):
        fired = ((np.abs(gate[0]) * (weights if weights.shape[0] else 1)) if magnitude else gate[0]) >= 0.3
        compact = np.empty(50, np.float32)
        assert cpu_ops.compact_products(gate[0], up[0, :fired.sum()].copy(), np.float32(0.3), compact,
                                        magnitude, weights) == fired.sum()
        np.testing.assert_allclose(compact[:fired.sum()], gate[0][fired] * up[0, :fired.sum()])
    cpu_ops.silu(gate, out)
    np.testing.assert_allclose(out, torch.nn.functional.silu(torch.from_numpy(gate)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qtype", [t for t in CPU_NATIVE_TYPES if not FORMATS[t].k_quant])  # K: not 128 wide
@pytest.mark.parametrize("float_activations", [True, False])
@pytest.mark.parametrize("mode", ["predicted", "exact", "cats"])
def test_sparse_ffn_block_matches_reference(rng, qtype, float_activations, mode):
    """FATReLU over predicted candidates or every neuron, and CATS (every neuron, |SiLU| >= threshold)."""
    predicted, silu = mode == "predicted", mode == "cats"
    activation = reference.cats if silu else reference.fatrelu
    n_embd, n_ff = 128, 200
    gate, gate_f = random_matrix(rng, qtype, (n_ff, n_embd))
    up, up_f = random_matrix(rng, qtype, (n_ff, n_embd))
    down_t, down_t_f = random_matrix(rng, qtype, (n_ff, n_embd))
    x = rng.standard_normal((1, n_embd), dtype=np.float32)
    residual = rng.standard_normal((1, n_embd), dtype=np.float32)
    # what the kernel multiplies: int8 activation blocks, for quantized weights unless float_activations
    xq = x[0] if float_activations or not gate.quantized else reference.quantize_activations(x[0])
    values = np.sort(np.abs(reference.cats(gate_f @ xq, 0)) if silu else gate_f @ xq)
    threshold = np.float32((values[120] + values[121]) / 2)  # between two values: no neuron sits on it
    candidates = np.sort(rng.permutation(n_ff)[:60]).astype(np.int64) if predicted else np.arange(n_ff)
    out = np.empty((1, n_embd), np.float32)
    scratch = SparseFFNScratch(np.empty(n_ff, np.float32), np.empty(n_ff, np.float32), np.empty(n_ff, np.float32),
                               np.empty(n_ff, np.int64), out)
    buffers = [scratch.gate, scratch.active, scratch.up, scratch.hidden]
    before = residual.copy()
    block = cpu_layer.sparse_ffn_block(gate.code, up.code, down_t.code, float_activations)
    weights = FFNWeights(gate.raw, up.raw, down_t.raw, threshold, silu, np.float32(1.0))
    fired = block(residual, prepare(x), weights, candidates.copy(), len(candidates) if predicted else -1, scratch, 2)
    assert fired == int((activation(gate_f[candidates] @ xq, threshold) != 0).sum())
    expected = reference.sparse_ffn(gate_f, up_f, down_t_f, xq, candidates, threshold, activation)
    hidden = activation(gate_f[candidates] @ xq, threshold) * (up_f[candidates] @ xq)
    magnitude = np.abs(hidden) @ np.abs(down_t_f[candidates]) + np.abs(before[0])
    # S3 with int8 coefficients: against the twin fed the block's own products
    if down_t.quantized and not float_activations:
        rows, products = buffers[1][:fired], buffers[3][:fired]
        np.testing.assert_array_equal(rows, candidates[hidden != 0])
        np.testing.assert_allclose(products, hidden[hidden != 0], rtol=1e-4, atol=1e-6)
        expected = reference.accumulate_rows_int8(to_gguf_bytes(down_t, np.arange(n_ff)), qtype, (n_ff, n_embd),
                                                  rows, products)
    assert np.all(np.abs(residual[0] - before[0] - expected) <= 1e-4 * magnitude + 1e-6)


@pytest.mark.parametrize("qtype", [T.F32, T.Q8_0])
def test_predict_matches_reference(rng, qtype):
    n_embd, rank, n_ff = 64, 32, 96
    fc1, fc1_f = random_matrix(rng, qtype, (rank, n_embd))
    fc2, fc2_f = random_matrix(rng, qtype, (n_ff, rank))
    x = rng.standard_normal((1, n_embd), dtype=np.float32)
    selected, logits = np.empty(n_ff, np.int64), np.empty((1, n_ff), np.float32)
    threshold = np.float32(0.1)
    m = cpu_layer.predict(fc1.code, fc2.code, True)(x, activation_buffers(1, n_embd), fc1.raw, fc2.raw, threshold,
                                                   activation_buffers(1, rank), logits, selected)
    expected = fc2_f @ np.maximum(fc1_f @ x[0], 0)
    np.testing.assert_allclose(logits[0], expected, rtol=1e-4, atol=1e-5)
    near = np.abs(expected - threshold) < 1e-4  # a neuron exactly at the threshold may go either way
    chosen = np.zeros(n_ff, bool)
    chosen[selected[:m]] = True
    np.testing.assert_array_equal(chosen[~near], (expected >= threshold)[~near])


def test_int8_error_bound_is_the_documented_one():
    assert INT8_ERROR_BOUND == pytest.approx(32 ** 0.5 / 254)
