"""The arguments of the numba layer blocks (`cpu_layer.py`, `teal_layer.py`), grouped as named tuples (numba
takes a named tuple of arrays and scalars as one argument, as it takes `cpu_quant.Activations`):

  AttentionWeights  one layer's attention weights and its constants
  KVState           where the T tokens sit and one layer's KV caches
  AttentionScratch  the attention block's buffers (its input, Q/K/V, output)
  FFNWeights        one layer's gate, up and down (or transposed down) weights and its activation
  DenseFFNScratch, SparseFFNScratch, TEALFFNScratch   the FFN blocks' buffers
  SiteScales        a layer's per-column weights of TEAL's input selection (WINA's column norms)
  Selection         the column-sparse products' chosen input entries (TEAL)

Each tuple is built once (a layer's weights by its part, the buffers by the run state), so that a decoded token
builds none. `BoundCall` calls a block's compiled code directly while its arguments are the same objects as on
the call before (a part decoding with its run state's buffers), skipping numba's per-call typing of the tuples.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .cpu_quant import Activations


NONE = np.zeros(0, np.float32)  # a weight vector the model does not have (a bias, a norm): the block skips its step


class AttentionWeights(NamedTuple):
    norm: np.ndarray  # (n_embd,) float32, attn_norm
    qkv: np.ndarray  # raw (rows, bytes) uint8: Q, K and V rows in one matrix (TEAL: its transpose)
    output: np.ndarray  # raw: the output projection (TEAL: its transpose)
    eps: np.float32  # RMSNorm's
    residual_scale: np.float32
    qkv_bias: np.ndarray = NONE  # (q_rows + 2 kv_rows,) float32 added to the Q/K/V rows (qwen2), or NONE
    q_norm: np.ndarray = NONE  # (head_dim,) float32: RMSNorm of each Q head before RoPE (qwen3, gemma3), or NONE
    k_norm: np.ndarray = NONE  # (head_dim,) float32: the same for each K head
    post_norm: np.ndarray = NONE  # (n_embd,) float32: RMSNorm of the block's output (gemma3), or NONE
    query_scale: np.float32 = np.float32(1.0)  # queries multiplied by it after RoPE (`ModelConfig.query_scale`)


class KVState(NamedTuple):
    cos: np.ndarray  # (n_ctx, head_dim / 2) float32, RoPE
    sin: np.ndarray
    positions: np.ndarray  # (T,) int64: token t is at positions[t] of sequence sequences[t]
    sequences: np.ndarray  # (T,) int64
    k_cache: np.ndarray  # (n_seq, n_head_kv, n_ctx, head_dim): this layer's keys, of -ctk's type (`kv_rows.py`)
    v_cache: np.ndarray  # its values, of -ctv's
    k_scales: np.ndarray  # (n_seq, n_head_kv, n_ctx, head_dim / 32) int16: Q8_0's scales; (..., 0) for f32, f16
    v_scales: np.ndarray
    scores: np.ndarray  # (n_head, n_ctx) float32 scratch
    window: int = 0  # a query attends to the keys of its last `window` positions (its own included); 0: all


class AttentionScratch(NamedTuple):
    normed: Activations | np.ndarray  # (T, n_embd): RMSNorm(x), with int8 blocks (TEAL: float32 only)
    qkv: np.ndarray  # (T, q_rows + 2 kv_rows)
    q: np.ndarray  # (T, n_head, head_dim)
    k: np.ndarray  # (T, n_head_kv, head_dim)
    v: np.ndarray
    attended: Activations | np.ndarray  # (T, n_head * head_dim): the output projection's input
    out: np.ndarray  # (T, n_embd): the block's output before it is added to x


class FFNWeights(NamedTuple):
    gate: np.ndarray  # raw (n_ff, n_embd)
    up: np.ndarray  # raw (n_ff, n_embd)
    down: np.ndarray  # raw: (n_embd, n_ff) for the dense block, transposed (n_ff, n_embd) for the sparse one
    threshold: np.float32  # FATReLU's, or CATS' on |act(gate)|
    silu: bool  # the activation: SiLU (dense) or CATS (sparse: |act(gate)| thresholded), else FATReLU
    residual_scale: np.float32
    gelu: bool = False  # the activation is GELU (tanh approximation; gemma3), whatever `silu` says (CATS: its act)
    post_norm: np.ndarray = NONE  # (n_embd,) float32: RMSNorm of the block's output (gemma3), or NONE
    eps: np.float32 = np.float32(0.0)  # the post norm's
    scales: np.ndarray = NONE  # (n_ff,) float32: CHESS's per-neuron scales of |act(gate)| (sparse), or NONE (CATS)


class DenseFFNScratch(NamedTuple):
    gate: np.ndarray  # (T, n_ff)
    up: np.ndarray  # (T, n_ff)
    hidden: Activations  # (T, n_ff): act(gate) * up, the down projection's input
    out: np.ndarray  # (T, n_embd)


class SparseFFNScratch(NamedTuple):
    gate: np.ndarray  # (n_ff,) float32: the candidates' gate values
    up: np.ndarray  # (n_ff,) float32: the fired neurons' up values
    hidden: np.ndarray  # (n_ff,) float32: the fired neurons' act * up (S3's coefficients)
    active: np.ndarray  # (n_ff,) int64: the fired neurons
    out: np.ndarray  # (1, n_embd)


class TEALFFNWeights(NamedTuple):
    gate_up_t: np.ndarray  # raw (n_embd, 2 n_ff): gate's columns, then up's
    down_t: np.ndarray  # raw (n_ff, n_embd)
    residual_scale: np.float32
    gelu: bool = False  # the activation is GELU (tanh approximation; gemma3), else SiLU
    post_norm: np.ndarray = NONE  # (n_embd,) float32: RMSNorm of the block's output (gemma3), or NONE
    eps: np.float32 = np.float32(0.0)  # the post norm's


class SiteScales(NamedTuple):
    """One layer's weights of each TEAL site's input entries in the selection (WINA: the norms of the weight
    columns they multiply, so that |x_i| * scale_i is compared with the threshold); NONE for TEAL (|x_i| alone)."""
    attn_input: np.ndarray = NONE  # (n_embd,): columns of Q/K/V stacked
    attn_output_input: np.ndarray = NONE  # (n_head * head_dim,): columns of the output projection
    ffn_input: np.ndarray = NONE  # (n_embd,): columns of gate/up stacked
    ffn_down_input: np.ndarray = NONE  # (n_ff,): columns of down


class TEALFFNScratch(NamedTuple):
    gate_up: np.ndarray  # (2 n_ff,) float32
    hidden: np.ndarray  # (n_ff,) float32
    out: np.ndarray  # (1, n_embd)


class Selection(NamedTuple):
    selected: np.ndarray  # (widest input,) int64: the input entries kept
    coeffs: np.ndarray  # (widest input,) float32: their values


_SCALARS = (int, float, bool, np.integer, np.floating, np.bool_)


class BoundCall:
    """A numba dispatcher called through its compiled entry point while the arguments are the same objects as on
    the one-token call before (scalars: of the same type), else through the dispatcher, which types them (and
    compiles). Only one-token calls (the first argument, x, of one row: a decoding run state's) are remembered,
    so that a prompt's buffers are not kept alive."""

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.args: tuple = ()
        self.entry = None

    def __call__(self, *args):
        entry, last = self.entry, self.args
        if entry is not None and len(args) == len(last) and all(
                a is b or (isinstance(a, _SCALARS) and type(a) is type(b)) for a, b in zip(args, last)):
            return entry(*args)
        result = self.dispatcher(*args)
        if args[0].shape[0] == 1:
            compiled = self.dispatcher.overloads.get(tuple(self.dispatcher.typeof_pyval(a) for a in args))
            self.entry, self.args = (compiled.entry_point, args) if compiled is not None else (None, ())
        return result
