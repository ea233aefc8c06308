"""numba kernels for the parts of a decoder layer that are not weight products: RMSNorm, biases, RoPE, causal
attention over the KV cache (within a sliding window on such layers), the FFN activations and the residual add.

All of them write into caller-provided float32 buffers (the packed forward pass allocates them once per
batch size), so decoding a token allocates nothing here. Reference twins: `model.py` (torch) and
`reference.py` (numpy).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kv_rows import add_row, dot_row

_OPTIONS = dict(nogil=True, cache=True)


@njit(**_OPTIONS)
def rms_norm(x, weight, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight   x, out (T, n); the mean accumulated in float64."""
    n = x.shape[1]
    for t in range(x.shape[0]):
        total = 0.0
        for i in range(n):
            total += np.float64(x[t, i]) * x[t, i]
        inverse = np.float32(1.0 / math.sqrt(total / n + eps))
        for i in range(n):
            out[t, i] = x[t, i] * inverse * weight[i]


@njit(**_OPTIONS)
def add_bias(x, bias):
    """In place: x[t] += bias   x (T, n), bias (n,)."""
    for t in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[t, i] += bias[i]


@njit(**_OPTIONS)
def rope(x, cos, sin, positions):
    """In place: rotate pairs (2j, 2j+1), j < cos.shape[1], of every head of x (T, heads, head_dim) by the angles
    of positions[t] (cos/sin tables (n_ctx, rope_dim // 2))."""
    for t in range(x.shape[0]):
        c, s = cos[positions[t]], sin[positions[t]]
        for h in range(x.shape[1]):
            head = x[t, h]
            for j in range(c.shape[0]):
                even, odd = head[2 * j], head[2 * j + 1]
                head[2 * j] = even * c[j] - odd * s[j]
                head[2 * j + 1] = even * s[j] + odd * c[j]


@njit(parallel=True, fastmath=True, **_OPTIONS)
def attention(q, kv, out):
    """Causal attention of T new queries: query t at position kv.positions[t] of sequence kv.sequences[t], over
    that sequence's cache up to its own position (the cache already holds its key and value): one sequence's prompt
    (positions start.., sequences 0) or one token of each of several sequences decoded together.
    q, out (T, n_head, head_dim); kv: `block_args.KVState`, its caches (n_seq, n_head_kv, n_ctx, head_dim) of any
    type of `kv_rows.py`, read in place. Grouped-query: head h reads KV head h // (n_head // n_head_kv). With
    kv.window > 0 (a sliding-window layer), only the keys of the query's last kv.window positions."""
    tokens, n_head = q.shape[0], q.shape[1]
    group = n_head // kv.k_cache.shape[1]
    for h in prange(n_head):
        g = h // group
        for t in range(tokens):
            s = kv.sequences[t]
            end = kv.positions[t] + 1
            start = max(end - kv.window, 0) if kv.window > 0 else 0
            _attend(q[t, h], kv.k_cache[s, g], kv.k_scales[s, g], kv.v_cache[s, g], kv.v_scales[s, g],
                    (start, end), kv.scores[h], out[t, h])


@njit(inline="always", fastmath=True, **_OPTIONS)
def _attend(query, keys, key_scales, values, value_scales, span, s, target):
    """target (head_dim,) = softmax(keys[start:end] . query / sqrt(head_dim)) . values[start:end], span = (start,
    end); keys, values (>= end, head_dim) rows of a cache type and their scales (`kv_rows.py`); s (>= end,)
    scratch."""
    start, end = span
    scale = np.float32(1.0 / math.sqrt(query.shape[0]))
    best = -np.inf
    for p in range(start, end):
        acc = dot_row(query, keys[p], key_scales[p]) * scale
        s[p] = acc
        best = max(best, acc)
    total = np.float32(0.0)
    for p in range(start, end):
        e = np.float32(math.exp(s[p] - best))
        s[p] = e
        total += e
    inverse = np.float32(1.0) / total
    for d in range(target.shape[0]):
        target[d] = 0.0
    for p in range(start, end):
        add_row(target, s[p] * inverse, values[p], value_scales[p])


@njit(fastmath=True, **_OPTIONS)
def silu_times(gate, up, out):
    """out = silu(gate) * up, elementwise over (T, n) arrays."""
    for t in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            out[t, i] = g / (np.float32(1.0) + np.float32(math.exp(-g))) * up[t, i]


GELU_C = np.float32(math.sqrt(2.0 / math.pi))


@njit(fastmath=True, **_OPTIONS)
def gelu_times(gate, up, out):
    """out = gelu(gate) * up, elementwise over (T, n) arrays; GELU's tanh approximation (llama.cpp's ggml_gelu)."""
    for t in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            inner = GELU_C * (g + np.float32(0.044715) * g * g * g)
            out[t, i] = np.float32(0.5) * g * (np.float32(1.0) + np.float32(math.tanh(inner))) * up[t, i]


@njit(fastmath=True, **_OPTIONS)
def silu(values, out):
    """out = silu(v) = v / (1 + exp(-v)), elementwise over (T, n) arrays (out may be values)."""
    for t in range(values.shape[0]):
        for i in range(values.shape[1]):
            v = values[t, i]
            out[t, i] = v / (np.float32(1.0) + np.float32(math.exp(-v)))


@njit(fastmath=True, **_OPTIONS)
def gelu(values, out):
    """out = gelu(v), GELU's tanh approximation, elementwise over (T, n) arrays (out may be values)."""
    for t in range(values.shape[0]):
        for i in range(values.shape[1]):
            v = values[t, i]
            inner = GELU_C * (v + np.float32(0.044715) * v * v * v)
            out[t, i] = np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.tanh(inner)))


@njit(**_OPTIONS)
def fatrelu(values, threshold, out):
    """out = v if v >= threshold else 0 (threshold 0: ReLU), elementwise over (T, n) arrays."""
    for t in range(values.shape[0]):
        for i in range(values.shape[1]):
            v = values[t, i]
            out[t, i] = v if v >= threshold else np.float32(0.0)


@njit(**_OPTIONS)
def add_scaled(x, y, scale):
    """In place: x += scale * y   (T, n) arrays (the residual add; scale is MiniCPM's residual scale)."""
    for t in range(x.shape[0]):
        for i in range(x.shape[1]):
            x[t, i] += scale * y[t, i]


@njit(**_OPTIONS)
def fatrelu_times(gate, up, threshold, out):
    """out = FATReLU(gate) * up, elementwise over (T, n) arrays."""
    for t in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[t, i]
            out[t, i] = g * up[t, i] if g >= threshold else np.float32(0.0)


@njit(**_OPTIONS)
def select_rows(values, threshold, candidates, selected, magnitude, scales):
    """selected[:k] = the candidates[i] with values[i] >= threshold (|values[i]| with `magnitude`: CATS; times
    scales[i] when `scales` (n,) is not empty: CHESS's per-neuron scales), in order; returns k. candidates,
    values (n,); an empty `candidates` array means 0..n-1."""
    k = 0
    for i in range(values.shape[0]):
        if _passes(values[i], threshold, magnitude, scales, i):
            selected[k] = candidates[i] if candidates.shape[0] else i
            k += 1
    return k


@njit(**_OPTIONS)
def compact_products(gate, up, threshold, out, magnitude, scales):
    """out[:k] = gate[i] * up[j] over the i with gate[i] >= threshold (|gate[i]| with `magnitude`, times scales[i]
    when not empty), j counting those (up holds only their rows, in order): the S2 products of the neurons that
    fired; returns k."""
    k = 0
    for i in range(gate.shape[0]):
        if _passes(gate[i], threshold, magnitude, scales, i):
            out[k] = gate[i] * up[k]
            k += 1
    return k


@njit(inline="always", **_OPTIONS)
def _passes(value, threshold, magnitude, scales, i):
    """Whether a neuron fires: FATReLU's value >= threshold, or CATS's |act| >= threshold (CHESS's |act| *
    scales[i], when scales is not empty)."""
    if not magnitude:
        return value >= threshold
    return (abs(value) * scales[i] if scales.shape[0] else abs(value)) >= threshold


@njit(**_OPTIONS)
def select_inputs(values, threshold, scales, selected, coeffs):
    """TEAL's input sparsity: selected[:k] = the i with |values[i]| >= threshold (WINA: |values[i]| * scales[i] >=
    threshold, scales (n,) the norms of the weight columns the entries multiply; empty for TEAL), in order, and
    coeffs[:k] their values (the columns of a projection that are read, and what they are scaled by); returns k.
    values (n,)."""
    k = 0
    weighted = scales.shape[0] > 0
    for i in range(values.shape[0]):
        v = values[i]
        if (abs(v) * scales[i] if weighted else abs(v)) >= threshold:
            selected[k] = i
            coeffs[k] = v
            k += 1
    return k


@njit(**_OPTIONS)
def zero_below(values, threshold, scales):
    """In place: entries of values (T, n) whose magnitude (WINA: times scales (n,), empty for TEAL) is below
    threshold become 0; returns how many did."""
    zeroed = 0
    weighted = scales.shape[0] > 0
    for t in range(values.shape[0]):
        for i in range(values.shape[1]):
            if (abs(values[t, i]) * scales[i] if weighted else abs(values[t, i])) < threshold:
                values[t, i] = 0.0
                zeroed += 1
    return zeroed
