"""A decoder layer's blocks as single numba calls over packed weights: the attention block, the dense FFN
block, and the sparse FFN blocks (predictor, gate rows, S2, S3), so that a token costs a few calls per layer
instead of dozens (each Python -> numba call costs microseconds; a 7B token makes hundreds of them).

Each block is made for its weights' formats: `attention_block(qkv_code, out_code, float_activations)` returns
the numba function for those (cached, on disk too), whose weights are then passed as raw (rows, bytes) uint8
arrays (`PackedMatrix.raw`); `dispatch.py` resolves each product to one kernel at compile time, so a run compiles
only what its file's formats and its mode need. Their arguments are named tuples (`block_args.py`: weights, KV
state, scratch; activations are `cpu_quant.Activations`) of preallocated buffers. Every block writes into
caller-provided float32 buffers and returns counts, never arrays.
`float_activations`: quantized weights multiply float32 activations (and S3 float32 coefficients) instead of
llama.cpp's int8 blocks.

Reference twins: the same blocks composed from `cpu_quant`'s Python API (the runtime's tests check them against
`reference/model.py`, the torch reference), and `reference.py` for each kernel.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from . import cpu_ops
from .cpu_quant import SCALE_GROUPS, prepare_blocks
from .dispatch import ALL_ROWS, accumulate, product
from .kv_rows import store_row
from .variants import specialization

_OPTIONS = dict(nogil=True, cache=True)
DENSE_GATE_SHARE = 0.4  # gathered gate rows vs the dense kernel's speed (docs/cpu-decoding.md, "Kernel design choices")


@njit(**_OPTIONS)
def prepare(act, code):
    """Fill act's block data (packed order, int8 quantization) from act.x, for matrices of format `code`."""
    prepare_blocks(act.x, act.xp, act.xsum, act.qx, act.dx, act.qsum, SCALE_GROUPS[code])


@njit(**_OPTIONS)
def normalize(x, norm, eps, normed, code):
    """normed = RMSNorm(x), with its int8 blocks for matrices of format `code`."""
    cpu_ops.rms_norm(x, norm, eps, normed.x)
    prepare(normed, code)


@njit(**_OPTIONS)
def dense_gate_above(n_ff):
    """Above this many candidate neurons, reading all gate rows densely is faster than gathering them."""
    return int(n_ff * DENSE_GATE_SHARE)


@functools.cache
def attention_block(qkv_code: int, out_code: int, float_activations: bool):
    """The attention block for Q/K/V rows of format `qkv_code` and an output projection of `out_code`."""

    @specialization(qkv_code, out_code, float_activations)
    def block(x, weights, kv, scratch):
        """x (T, n_embd) += residual_scale * attention(RMSNorm(x)) for T tokens, token t at position
        kv.positions[t] of sequence kv.sequences[t] (one sequence's prompt, or one token of each of several
        sequences); their keys and values written to the layer's caches first. weights: `AttentionWeights`,
        kv: `KVState`, scratch: `AttentionScratch` (`block_args.py`)."""
        s = scratch
        normalize(x, weights.norm, weights.eps, s.normed, qkv_code)
        product(qkv_code, weights.qkv, s.normed, ALL_ROWS, True, float_activations, s.qkv)
        attend(s.qkv, s.q, s.k, s.v, kv, weights, s.attended.x)
        prepare(s.attended, out_code)
        product(out_code, weights.output, s.attended, ALL_ROWS, True, float_activations, s.out)
        if weights.post_norm.shape[0]:
            cpu_ops.rms_norm(s.out, weights.post_norm, weights.eps, s.out)
        cpu_ops.add_scaled(x, s.out, weights.residual_scale)

    return block


@njit(**_OPTIONS)
def attend(qkv, q, k, v, kv, weights, attended):
    """attended (T, n_head * head_dim) = causal attention of the T tokens whose Q, K and V rows are qkv (T, q_rows +
    2 kv_rows), q (T, n_head, head_dim), k and v (T, n_head_kv, head_dim) their scratch: the biases of `weights`
    (`AttentionWeights`) added, each Q and K head normed by its norms, Q and K rotated (RoPE), Q scaled by its
    query_scale, K and V written to
    the caches of `kv` (`KVState`) first, in the caches' types (`kv_rows.py`). Q and K rows are in adjacent-pair
    order (the loader permutes NEOX models' rows: `runtime/weights.py`)."""
    tokens = qkv.shape[0]
    q_rows, kv_rows = q.shape[1] * q.shape[2], k.shape[1] * k.shape[2]
    if weights.qkv_bias.shape[0]:
        cpu_ops.add_bias(qkv, weights.qkv_bias)
    q.reshape((tokens, q_rows))[:] = qkv[:, :q_rows]
    k.reshape((tokens, kv_rows))[:] = qkv[:, q_rows:q_rows + kv_rows]
    v.reshape((tokens, kv_rows))[:] = qkv[:, q_rows + kv_rows:]
    if weights.q_norm.shape[0]:
        heads_q, heads_k = q.reshape((tokens * q.shape[1], q.shape[2])), k.reshape((tokens * k.shape[1], k.shape[2]))
        cpu_ops.rms_norm(heads_q, weights.q_norm, weights.eps, heads_q)
        cpu_ops.rms_norm(heads_k, weights.k_norm, weights.eps, heads_k)
    cpu_ops.rope(q, kv.cos, kv.sin, kv.positions)
    cpu_ops.rope(k, kv.cos, kv.sin, kv.positions)
    if weights.query_scale != 1:
        q *= weights.query_scale
    for t in range(tokens):
        s, p = kv.sequences[t], kv.positions[t]
        for h in range(k.shape[1]):
            store_row(k[t, h], kv.k_cache[s, h, p], kv.k_scales[s, h, p])
            store_row(v[t, h], kv.v_cache[s, h, p], kv.v_scales[s, h, p])
    cpu_ops.attention(q, kv, attended.reshape(q.shape))


@functools.cache
def dense_ffn_block(gate_code: int, up_code: int, down_code: int, float_activations: bool):
    """The dense FFN block for gate, up and down projections of these formats."""

    @specialization(gate_code, up_code, down_code, float_activations)
    def block(x, normed, weights, scratch):
        """x += residual_scale * down(act(gate(normed)) * up(normed)), act = GELU, SiLU or FATReLU(threshold), the
        down projection's output normed first when the model has a post-FFN norm. weights: `FFNWeights` (down
        row-major), scratch: `DenseFFNScratch`."""
        w, s = weights, scratch
        product(gate_code, w.gate, normed, ALL_ROWS, True, float_activations, s.gate)
        product(up_code, w.up, normed, ALL_ROWS, True, float_activations, s.up)
        if w.gelu:
            cpu_ops.gelu_times(s.gate, s.up, s.hidden.x)
        elif w.silu:
            cpu_ops.silu_times(s.gate, s.up, s.hidden.x)
        else:
            cpu_ops.fatrelu_times(s.gate, s.up, w.threshold, s.hidden.x)
        prepare(s.hidden, down_code)
        product(down_code, w.down, s.hidden, ALL_ROWS, True, float_activations, s.out)
        if w.post_norm.shape[0]:
            cpu_ops.rms_norm(s.out, w.post_norm, w.eps, s.out)
        cpu_ops.add_scaled(x, s.out, w.residual_scale)

    return block


@functools.cache
def predict(fc1_code: int, fc2_code: int, float_activations: bool):
    """One token's predictor for fc1 and fc2 weights of these formats."""

    @specialization(fc1_code, fc2_code, float_activations)
    def block(x, residual, fc1, fc2, threshold, hidden, logits, selected):
        """x (1, n_embd) the residual stream before ffn_norm: selected[:m] = the neurons with
        fc2 . ReLU(fc1 . x) >= threshold; returns m. residual, hidden: Activations buffers (1, n_embd) and
        (1, rank); logits (1, n_ff)."""
        residual.x[:] = x
        prepare(residual, fc1_code)
        product(fc1_code, fc1, residual, ALL_ROWS, True, float_activations, hidden.x)
        for i in range(hidden.x.shape[1]):
            hidden.x[0, i] = max(hidden.x[0, i], np.float32(0.0))
        prepare(hidden, fc2_code)
        product(fc2_code, fc2, hidden, ALL_ROWS, True, float_activations, logits)
        return cpu_ops.select_rows(logits[0], threshold, ALL_ROWS, selected, False, logits[0, :0])

    return block


@functools.cache
def sparse_ffn_block(gate_code: int, up_code: int, down_code: int, float_activations: bool):
    """One token's sparse FFN for gate, up and transposed down projections of these formats."""

    @specialization(gate_code, up_code, down_code, float_activations)
    def block(x, normed, weights, candidates, n_candidates, scratch, chunks):
        """The FFN over candidate neurons (candidates[:n_candidates], ascending; n_candidates < 0: every neuron;
        more than `dense_gate_above`: their gate values are taken from the dense gate kernel, faster then):
        gate rows -> the activation -> up rows of the neurons that fired (S2) -> sum of their down_t rows scaled
        by act * up (S3); x += residual_scale * that (its output normed first when the model has a post-FFN norm).
        The activation: FATReLU (gate >= threshold), or with `silu` CATS (every gate row, SiLU, or GELU with
        `gelu`, the neurons whose |act(gate)| >= threshold, the layer's calibrated one; CHESS: |act(gate)| times
        the neuron's scale, `w.scales`, when not empty).
        weights: `FFNWeights` (down transposed), scratch: `SparseFFNScratch`; chunks: threads for S3
        (numba.get_num_threads() from Python). Returns the number of neurons that fired."""
        w, s = weights, scratch
        gate, up, hidden, active, threshold = s.gate, s.up, s.hidden, s.active, w.threshold
        n_embd = x.shape[1]
        if n_candidates < 0:
            count = gate.shape[0]
            scales = w.scales[:count]  # CHESS's (n_ff,), or empty
            product(gate_code, w.gate, normed, ALL_ROWS, True, float_activations, gate.reshape((1, -1)))
            if w.silu and w.gelu:
                cpu_ops.gelu(gate.reshape((1, -1)), gate.reshape((1, -1)))
            elif w.silu:
                cpu_ops.silu(gate.reshape((1, -1)), gate.reshape((1, -1)))
            fired = cpu_ops.select_rows(gate, threshold, ALL_ROWS, active, w.silu, scales)
        else:
            count = n_candidates
            scales = w.scales[:0]  # FATReLU: none
            if count > dense_gate_above(gate.shape[0]):  # every gate row (hidden as scratch), then the candidates'
                product(gate_code, w.gate, normed, ALL_ROWS, True, float_activations, hidden.reshape((1, -1)))
                for j in range(count):
                    gate[j] = hidden[candidates[j]]
            else:
                product(gate_code, w.gate, normed, candidates[:count], False, float_activations,
                        gate[:count].reshape((1, -1)))
            fired = cpu_ops.select_rows(gate[:count], threshold, candidates[:count], active, False, scales)
        product(up_code, w.up, normed, active[:fired], False, float_activations, up[:fired].reshape((1, -1)))
        cpu_ops.compact_products(gate[:count], up, threshold, hidden, w.silu, scales)
        accumulate(down_code, w.down, n_embd, active[:fired], hidden[:fired], s.out[0], chunks, float_activations)
        if w.post_norm.shape[0]:
            cpu_ops.rms_norm(s.out, w.post_norm, w.eps, s.out)
        cpu_ops.add_scaled(x, s.out, w.residual_scale)
        return fired

    return block


@functools.cache
def sparse_down(down_code: int, float_activations: bool):
    """Several tokens' sparse down projection for a transposed down projection of this format."""

    @specialization(down_code, float_activations)
    def block(hidden, wdown_t, active, coeffs, out, chunks):
        """out[t] = sum over the neurons i with hidden[t, i] != 0 of hidden[t, i] * down_t[i]: the down
        projection of T tokens read from the transposed weight, each token's active rows only. hidden (T, n_ff),
        out (T, n_embd); active (n_ff,) int64 and coeffs (n_ff,) float32 scratch."""
        for t in range(hidden.shape[0]):
            k = 0
            for i in range(hidden.shape[1]):
                if hidden[t, i] != 0:
                    active[k] = i
                    coeffs[k] = hidden[t, i]
                    k += 1
            accumulate(down_code, wdown_t, out.shape[1], active[:k], coeffs[:k], out[t], chunks, float_activations)

    return block
