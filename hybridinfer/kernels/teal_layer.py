"""One token's attention and FFN blocks with TEAL's input sparsity (arXiv 2408.14690), single numba calls over
transposed packed weights: every projection's input entries whose magnitude is below their site's threshold are
zeroed, so the rows of the transposed weight they would scale (the columns of the weight) are not read.

A projection y = W x with W (out, in) is computed from W_t (in, out) as y = sum over the i with |x_i| >= t of
x_i * W_t[i]: `dispatch.accumulate`, the sparse FFN's S3 kernel, which reads only those rows. The four sites of a
layer (`sparsity.thresholds.SITES["teal"]`): the normed residual into Q/K/V, the attention output into the output
projection, the normed residual into gate/up (one transposed matrix: gate's columns, then up's), and
SiLU(gate) * up into down. Several tokens (a prompt) take the dense row-major products of the zeroed inputs
instead (`runtime/teal.py`): the same computation, each weight row read once for all tokens.

Reference twins: `reference/sparse_inputs.py` (the torch oracle with the same zeroing) and `reference.py`'s
`select_inputs` for the selection kernel.
"""

from __future__ import annotations

import functools

from . import cpu_ops
from .cpu_layer import attend
from .dispatch import accumulate
from .variants import specialization


@functools.cache
def teal_attention_block(qkv_code: int, out_code: int, float_activations: bool):
    """The attention block for transposed Q/K/V (format `qkv_code`) and output projection (`out_code`)."""

    @specialization(qkv_code, out_code, float_activations)
    def block(x, norm, eps, wqkv_t, wo_t, input_threshold, output_threshold, normed, selected, coeffs, qkv, q, k, v,
              cos, sin, positions, sequences, k_caches, v_caches, scores, attended, out, residual_scale, chunks):
        """x (1, n_embd) += residual_scale * attention(RMSNorm(x)) for one token, as `cpu_layer.attention_block`,
        with the entries of RMSNorm(x) below input_threshold and of the attention output below output_threshold
        (in magnitude) zeroed. wqkv_t (n_embd, q_rows + 2 kv_rows) and wo_t (n_head * head_dim, n_embd):
        transposed raw matrices; normed (1, n_embd), attended (1, n_head * head_dim) float32; selected (int64)
        and coeffs (float32) scratch of at least either width. Returns the inputs read by Q/K/V and by the
        output projection."""
        cpu_ops.rms_norm(x, norm, eps, normed)
        read_in = cpu_ops.select_inputs(normed[0], input_threshold, selected, coeffs)
        accumulate(qkv_code, wqkv_t, qkv.shape[1], selected[:read_in], coeffs[:read_in], qkv[0], chunks,
                   float_activations)
        attend(qkv, q, k, v, cos, sin, positions, sequences, k_caches, v_caches, scores, attended)
        read_out = cpu_ops.select_inputs(attended[0], output_threshold, selected, coeffs)
        accumulate(out_code, wo_t, out.shape[1], selected[:read_out], coeffs[:read_out], out[0], chunks,
                   float_activations)
        cpu_ops.add_scaled(x, out, residual_scale)
        return read_in, read_out

    return block


@functools.cache
def teal_ffn_block(gate_up_code: int, down_code: int, float_activations: bool):
    """The SwiGLU FFN block for transposed gate/up (format `gate_up_code`) and down (`down_code`) projections."""

    @specialization(gate_up_code, down_code, float_activations)
    def block(x, normed, wgate_up_t, wdown_t, input_threshold, down_threshold, selected, coeffs, gate_up, hidden,
              out, residual_scale, chunks):
        """x (1, n_embd) += residual_scale * down(SiLU(gate(n)) * up(n)), n = normed (1, n_embd) with its entries
        below input_threshold zeroed, and the down projection's input entries below down_threshold zeroed (in
        magnitude). wgate_up_t (n_embd, 2 n_ff): gate's columns then up's; wdown_t (n_ff, n_embd); gate_up
        (2 n_ff,) and hidden (n_ff,) float32; selected (int64) and coeffs (float32) scratch of at least n_ff.
        Returns the inputs read by gate/up and by down."""
        n_ff = hidden.shape[0]
        read_in = cpu_ops.select_inputs(normed[0], input_threshold, selected, coeffs)
        accumulate(gate_up_code, wgate_up_t, 2 * n_ff, selected[:read_in], coeffs[:read_in], gate_up, chunks,
                   float_activations)
        cpu_ops.silu_times(gate_up[:n_ff].reshape((1, n_ff)), gate_up[n_ff:].reshape((1, n_ff)),
                           hidden.reshape((1, n_ff)))
        read_down = cpu_ops.select_inputs(hidden, down_threshold, selected, coeffs)
        accumulate(down_code, wdown_t, out.shape[1], selected[:read_down], coeffs[:read_down], out[0], chunks,
                   float_activations)
        cpu_ops.add_scaled(x, out, residual_scale)
        return read_in, read_down

    return block
