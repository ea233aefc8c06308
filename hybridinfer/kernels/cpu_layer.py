"""A decoder layer's blocks as single numba calls over packed weights: the attention block, the dense FFN
block, and the sparse FFN blocks (predictor, gate rows, S2, S3), so that a token costs a few calls per layer
instead of dozens (each Python -> numba call costs microseconds; a 7B token makes hundreds of them).

A weight is passed as (code, raw): its format code (`formats.py`) and its bytes as a (rows, bytes)
uint8 array (`PackedMatrix.raw`); `product` and `accumulate` view them back and call the kernels of
`cpu_quant.py`. Activations are `cpu_quant.Activations` named tuples of preallocated buffers. Every block
writes into caller-provided float32 buffers and returns counts, never arrays. `float_activations`: quantized
weights multiply float32 activations (and S3 float32 coefficients) instead of llama.cpp's int8 blocks.

Reference twins: the same blocks composed from `cpu_quant`'s Python API (`packed_forward.py` tests them
against `model.py`, the torch reference), and `reference.py` for each kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import cpu_ops
from .cpu_accumulate_int8 import quant_accumulate_int8
from .cpu_quant import _float_accumulate, _float_dot_rows, _prepare_blocks, _quant_accumulate, _quant_dot_rows
from .formats import BF16, F16, F32

_OPTIONS = dict(nogil=True, cache=True)


@njit(**_OPTIONS)
def prepare(act):
    """Fill act's block data (packed order, int8 quantization) from act.x."""
    _prepare_blocks(act.x, act.xp, act.xsum, act.qx, act.dx, act.qsum)


@njit(**_OPTIONS)
def product(code, raw, act, rows, dense, float_activations, out):
    """out (T, k) = act.x @ W[r].T over r = all rows (dense) or rows[:k]; W given as (code, raw)."""
    if code == F32:
        _float_dot_rows(raw.view(np.float32), act.x, dense, rows, out)
    elif code == F16:
        _float_dot_rows(raw.view(np.int16), act.x, dense, rows, out)
    elif code == BF16:
        _float_dot_rows(raw.view(np.uint16), act.x, dense, rows, out)
    else:
        _quant_dot_rows(code, float_activations, raw, act.x.shape[1] // 32, act.xp, act.xsum, act.qx, act.dx, act.qsum,
                        dense, rows, out)


@njit(**_OPTIONS)
def accumulate(code, raw, cols, rows, coeffs, out, chunks, float_activations):
    """out (cols,) = sum_k coeffs[k] * W_t[rows[k]] (S3 over the transposed down projection), the rows shared
    among `chunks` threads; quantized formats with int8 coefficients unless `float_activations`."""
    if code == F32:
        _float_accumulate(raw.view(np.float32), rows, coeffs, out, chunks)
    elif code == F16:
        _float_accumulate(raw.view(np.int16), rows, coeffs, out, chunks)
    elif code == BF16:
        _float_accumulate(raw.view(np.uint16), rows, coeffs, out, chunks)
    elif float_activations:
        _quant_accumulate(code, raw, cols // 32, rows, coeffs, out, chunks)
    else:
        quant_accumulate_int8(code, raw, cols // 32, rows, coeffs, out, chunks)


_ALL = np.zeros(0, dtype=np.int64)  # `rows` argument of a dense product


@njit(**_OPTIONS)
def normalize(x, norm, eps, normed):
    """normed = RMSNorm(x), with its int8 blocks."""
    cpu_ops.rms_norm(x, norm, eps, normed.x)
    prepare(normed)


@njit(**_OPTIONS)
def attention_block(x, norm, eps, wqkv, wo, codes, float_activations, normed, qkv, q, k, v, cos, sin, start, k_cache,
                    v_cache, scores, attended, out, residual_scale):
    """x (T, n_embd) += residual_scale * attention(RMSNorm(x)) for T tokens at positions start.., their keys
    and values written to this layer's cache (n_head_kv, n_ctx, head_dim). wqkv: the Q, K and V rows in one raw
    matrix, wo the output projection, codes their formats; buffers qkv (T, q_rows + 2 kv_rows),
    q (T, n_head, head_dim), k and v (T, n_head_kv, head_dim), out (T, n_embd)."""
    tokens = x.shape[0]
    q_rows, kv_rows = q.shape[1] * q.shape[2], k.shape[1] * k.shape[2]
    normalize(x, norm, eps, normed)
    product(codes[0], wqkv, normed, _ALL, True, float_activations, qkv)
    q.reshape((tokens, q_rows))[:] = qkv[:, :q_rows]
    k.reshape((tokens, kv_rows))[:] = qkv[:, q_rows:q_rows + kv_rows]
    v.reshape((tokens, kv_rows))[:] = qkv[:, q_rows + kv_rows:]
    cpu_ops.rope(q, cos, sin, start)
    cpu_ops.rope(k, cos, sin, start)
    for t in range(tokens):
        for h in range(k.shape[1]):
            k_cache[h, start + t] = k[t, h]
            v_cache[h, start + t] = v[t, h]
    cpu_ops.attention(q, k_cache, v_cache, start, scores, attended.x.reshape(q.shape))
    prepare(attended)
    product(codes[1], wo, attended, _ALL, True, float_activations, out)
    cpu_ops.add_scaled(x, out, residual_scale)


@njit(**_OPTIONS)
def dense_ffn_block(x, normed, wgate, wup, wdown, codes, float_activations, silu, threshold, gate, up, hidden, out,
                    residual_scale):
    """x += residual_scale * down(act(gate(normed)) * up(normed)), act = SiLU or FATReLU(threshold)."""
    product(codes[0], wgate, normed, _ALL, True, float_activations, gate)
    product(codes[1], wup, normed, _ALL, True, float_activations, up)
    if silu:
        cpu_ops.silu_times(gate, up, hidden.x)
    else:
        cpu_ops.fatrelu_times(gate, up, threshold, hidden.x)
    prepare(hidden)
    product(codes[2], wdown, hidden, _ALL, True, float_activations, out)
    cpu_ops.add_scaled(x, out, residual_scale)


@njit(**_OPTIONS)
def predict(x, residual, fc1, fc2, codes, float_activations, threshold, hidden, logits, selected):
    """The predictor of one token, x (1, n_embd) the residual stream before ffn_norm: selected[:m] = the neurons
    with fc2 . ReLU(fc1 . x) >= threshold; returns m. residual, hidden: Activations buffers (1, n_embd) and
    (1, rank); logits (1, n_ff)."""
    residual.x[:] = x
    prepare(residual)
    product(codes[0], fc1, residual, _ALL, True, float_activations, hidden.x)
    for i in range(hidden.x.shape[1]):
        hidden.x[0, i] = max(hidden.x[0, i], np.float32(0.0))
    prepare(hidden)
    product(codes[1], fc2, hidden, _ALL, True, float_activations, logits)
    return cpu_ops.select_rows(logits[0], threshold, _ALL, selected)


DENSE_GATE_SHARE = 0.4  # gathered gate rows vs the dense kernel's speed (docs/cpu-decoding.md, "Kernel design choices")


@njit(**_OPTIONS)
def dense_gate_above(n_ff):
    """Above this many candidate neurons, reading all gate rows densely is faster than gathering them."""
    return int(n_ff * DENSE_GATE_SHARE)


@njit(**_OPTIONS)
def sparse_ffn_block(x, normed, wgate, wup, wdown_t, codes, float_activations, threshold, candidates, n_candidates,
                     gate, active, up, hidden, out, residual_scale, chunks):
    """One token's FFN over candidate neurons (candidates[:n_candidates], ascending; n_candidates < 0: every
    neuron; more than `dense_gate_above`: their gate values are taken from the dense gate kernel, faster then):
    gate rows -> FATReLU -> up rows of the neurons that fired (S2) -> sum of their down_t rows scaled by
    act * up (S3); x += residual_scale * that. Buffers gate, up, hidden (n_ff,), active (n_ff,) int64; chunks:
    threads for S3 (numba.get_num_threads() from Python). Returns the number of neurons that fired."""
    n_embd = x.shape[1]
    if n_candidates < 0:
        count = gate.shape[0]
        product(codes[0], wgate, normed, _ALL, True, float_activations, gate.reshape((1, -1)))
        fired = cpu_ops.select_rows(gate, threshold, _ALL, active)
    else:
        count = n_candidates
        if count > dense_gate_above(gate.shape[0]):  # every gate row (hidden as scratch), then the candidates'
            product(codes[0], wgate, normed, _ALL, True, float_activations, hidden.reshape((1, -1)))
            for j in range(count):
                gate[j] = hidden[candidates[j]]
        else:
            product(codes[0], wgate, normed, candidates[:count], False, float_activations,
                    gate[:count].reshape((1, -1)))
        fired = cpu_ops.select_rows(gate[:count], threshold, candidates[:count], active)
    product(codes[1], wup, normed, active[:fired], False, float_activations, up[:fired].reshape((1, -1)))
    cpu_ops.compact_products(gate[:count], up, threshold, hidden)
    accumulate(codes[2], wdown_t, n_embd, active[:fired], hidden[:fired], out[0], chunks, float_activations)
    cpu_ops.add_scaled(x, out, residual_scale)
    return fired


@njit(**_OPTIONS)
def sparse_down(hidden, wdown_t, code, active, coeffs, out, chunks, float_activations):
    """out[t] = sum over the neurons i with hidden[t, i] != 0 of hidden[t, i] * down_t[i]: the down projection of
    T tokens read from the transposed weight, each token's active rows only. hidden (T, n_ff), out (T, n_embd);
    active (n_ff,) int64 and coeffs (n_ff,) float32 scratch."""
    for t in range(hidden.shape[0]):
        k = 0
        for i in range(hidden.shape[1]):
            if hidden[t, i] != 0:
                active[k] = i
                coeffs[k] = hidden[t, i]
                k += 1
        accumulate(code, wdown_t, out.shape[1], active[:k], coeffs[:k], out[t], chunks, float_activations)
