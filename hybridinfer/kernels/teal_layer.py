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
    def block(x, weights, thresholds, kv, scratch, selection, chunks):
        """x (1, n_embd) += residual_scale * attention(RMSNorm(x)) for one token, as `cpu_layer.attention_block`,
        with the entries of RMSNorm(x) below thresholds[0] and of the attention output below thresholds[1] (in
        magnitude) zeroed. weights: `AttentionWeights` whose qkv (n_embd, q_rows + 2 kv_rows) and output
        (n_head * head_dim, n_embd) are transposed raw matrices; thresholds: the layer's four (n_sites,) float32;
        kv: `KVState`; scratch: `AttentionScratch` with float32 normed (1, n_embd) and attended (1, n_head *
        head_dim); selection: `Selection` of at least either width. Returns the inputs read by Q/K/V and by the
        output projection."""
        s, selected, coeffs = scratch, selection.selected, selection.coeffs
        cpu_ops.rms_norm(x, weights.norm, weights.eps, s.normed)
        read_in = cpu_ops.select_inputs(s.normed[0], thresholds[0], selected, coeffs)
        accumulate(qkv_code, weights.qkv, s.qkv.shape[1], selected[:read_in], coeffs[:read_in], s.qkv[0], chunks,
                   float_activations)
        attend(s.qkv, s.q, s.k, s.v, kv, weights, s.attended)
        read_out = cpu_ops.select_inputs(s.attended[0], thresholds[1], selected, coeffs)
        accumulate(out_code, weights.output, s.out.shape[1], selected[:read_out], coeffs[:read_out], s.out[0], chunks,
                   float_activations)
        cpu_ops.add_scaled(x, s.out, weights.residual_scale)
        return read_in, read_out

    return block


@functools.cache
def teal_ffn_block(gate_up_code: int, down_code: int, float_activations: bool):
    """The SwiGLU FFN block for transposed gate/up (format `gate_up_code`) and down (`down_code`) projections."""

    @specialization(gate_up_code, down_code, float_activations)
    def block(x, normed, weights, thresholds, selection, scratch, chunks):
        """x (1, n_embd) += residual_scale * down(SiLU(gate(n)) * up(n)), n = normed (1, n_embd) with its entries
        below thresholds[2] zeroed, and the down projection's input entries below thresholds[3] zeroed (in
        magnitude). weights: `TEALFFNWeights`; thresholds: the layer's four (n_sites,) float32; selection:
        `Selection` of at least n_ff; scratch: `TEALFFNScratch`. Returns the inputs read by gate/up and by down."""
        s, selected, coeffs = scratch, selection.selected, selection.coeffs
        n_ff = s.hidden.shape[0]
        read_in = cpu_ops.select_inputs(normed[0], thresholds[2], selected, coeffs)
        accumulate(gate_up_code, weights.gate_up_t, 2 * n_ff, selected[:read_in], coeffs[:read_in], s.gate_up,
                   chunks, float_activations)
        cpu_ops.silu_times(s.gate_up[:n_ff].reshape((1, n_ff)), s.gate_up[n_ff:].reshape((1, n_ff)),
                           s.hidden.reshape((1, n_ff)))
        read_down = cpu_ops.select_inputs(s.hidden, thresholds[3], selected, coeffs)
        accumulate(down_code, weights.down_t, s.out.shape[1], selected[:read_down], coeffs[:read_down], s.out[0],
                   chunks, float_activations)
        cpu_ops.add_scaled(x, s.out, weights.residual_scale)
        return read_in, read_down

    return block
