"""One token's attention and FFN blocks with TEAL's input sparsity (arXiv 2408.14690), single numba calls over
transposed packed weights: every projection's input entries whose magnitude is below their site's threshold are
zeroed, so the rows of the transposed weight they would scale (the columns of the weight) are not read. WINA
(arXiv 2505.19427) is the same blocks with per-column weights in the selection (`SiteScales`: the norms of the
columns, |x_i| * ||W[:, i]|| compared with the threshold).

A projection y = W x with W (out, in) is computed from W_t (in, out) as y = sum over the i with |x_i| >= t of
x_i * W_t[i]: `dispatch.accumulate`, the sparse FFN's S3 kernel, which reads only those rows. The four sites of a
layer (`sparsity.thresholds.SITES["teal"]`): the normed residual into Q/K/V, the attention output into the output
projection, the normed residual into gate/up (one transposed matrix: gate's columns, then up's), and
act(gate) * up (SiLU or GELU) into down. A block's output is normed before its residual add where the model says
so (gemma3's post-attention and post-FFN norms: they norm the projections' outputs, not their inputs). Several
tokens (a prompt) take the dense row-major products of the zeroed inputs instead (`runtime/teal.py`): the same
computation, each weight row read once for all tokens.

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
    def block(x, weights, thresholds, scales, kv, scratch, selection, chunks):
        """x (1, n_embd) += residual_scale * attention(RMSNorm(x)) for one token, as `cpu_layer.attention_block`,
        with the entries of RMSNorm(x) below thresholds[0] and of the attention output below thresholds[1] (in
        magnitude; WINA: times `scales`' column norms) zeroed. weights: `AttentionWeights` whose qkv (n_embd, q_rows +
        2 kv_rows) and output (n_head * head_dim, n_embd) are transposed raw matrices; thresholds: the layer's four
        (n_sites,) float32; scales: the layer's `SiteScales`;
        kv: `KVState`; scratch: `AttentionScratch` with float32 normed (1, n_embd) and attended (1, n_head *
        head_dim); selection: `Selection` of at least either width. Returns the inputs read by Q/K/V and by the
        output projection."""
        s, selected, coeffs = scratch, selection.selected, selection.coeffs
        cpu_ops.rms_norm(x, weights.norm, weights.eps, s.normed)
        read_in = cpu_ops.select_inputs(s.normed[0], thresholds[0], scales.attn_input, selected, coeffs)
        accumulate(qkv_code, weights.qkv, s.qkv.shape[1], selected[:read_in], coeffs[:read_in], s.qkv[0], chunks,
                   float_activations)
        attend(s.qkv, s.q, s.k, s.v, kv, weights, s.attended)
        read_out = cpu_ops.select_inputs(s.attended[0], thresholds[1], scales.attn_output_input, selected, coeffs)
        accumulate(out_code, weights.output, s.out.shape[1], selected[:read_out], coeffs[:read_out], s.out[0], chunks,
                   float_activations)
        if weights.post_norm.shape[0]:
            cpu_ops.rms_norm(s.out, weights.post_norm, weights.eps, s.out)
        cpu_ops.add_scaled(x, s.out, weights.residual_scale)
        return read_in, read_out

    return block


@functools.cache
def teal_ffn_block(gate_up_code: int, down_code: int, float_activations: bool):
    """The gated FFN block (SwiGLU, GeGLU) for transposed gate/up (format `gate_up_code`) and down (`down_code`)
    projections."""

    @specialization(gate_up_code, down_code, float_activations)
    def block(x, normed, weights, thresholds, scales, selection, scratch, chunks):
        """x (1, n_embd) += residual_scale * down(act(gate(n)) * up(n)) (its output normed first when the model has
        a post-FFN norm), act SiLU or GELU, n = normed (1, n_embd) with its entries below thresholds[2] zeroed, and
        the down projection's input entries below thresholds[3] zeroed (in magnitude; WINA: times `scales`' column
        norms). weights: `TEALFFNWeights`; thresholds: the layer's four (n_sites,) float32; scales: its
        `SiteScales`; selection: `Selection` of at least n_ff; scratch: `TEALFFNScratch`. Returns the inputs read by
        gate/up and by down."""
        s, selected, coeffs = scratch, selection.selected, selection.coeffs
        n_ff = s.hidden.shape[0]
        read_in = cpu_ops.select_inputs(normed[0], thresholds[2], scales.ffn_input, selected, coeffs)
        accumulate(gate_up_code, weights.gate_up_t, 2 * n_ff, selected[:read_in], coeffs[:read_in], s.gate_up,
                   chunks, float_activations)
        gate, up, hidden = (s.gate_up[:n_ff].reshape((1, n_ff)), s.gate_up[n_ff:].reshape((1, n_ff)),
                            s.hidden.reshape((1, n_ff)))
        if weights.gelu:
            cpu_ops.gelu_times(gate, up, hidden)
        else:
            cpu_ops.silu_times(gate, up, hidden)
        read_down = cpu_ops.select_inputs(s.hidden, thresholds[3], scales.ffn_down_input, selected, coeffs)
        accumulate(down_code, weights.down_t, s.out.shape[1], selected[:read_down], coeffs[:read_down], s.out[0],
                   chunks, float_activations)
        if weights.post_norm.shape[0]:
            cpu_ops.rms_norm(s.out, weights.post_norm, weights.eps, s.out)
        cpu_ops.add_scaled(x, s.out, weights.residual_scale)
        return read_in, read_down

    return block
