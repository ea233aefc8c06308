"""The plain torch twin of the GPU side's attention step (`attention_kernels.py`): RoPE on the new positions' queries
and keys, their keys and values written into the layer's KV cache, then causal attention of the queries over the
cache, read in place. It also serves the CPU device in production.

The cache is read in windows of WINDOW positions, each a view of the cache (a float16 cache is widened one window at
a time), merged by the online softmax (running maximum, running sum, running weighted values), as flash-decoding
does. Every window has the same shape, the last one shifted back to end inside the cache and its positions outside
[start, end) masked, so that a step allocates the same temporaries at position 10 as at position 4000: what it
reads grows with the positions used, what it allocates does not.

Shapes: qkv (T, (n_head + 2 n_head_kv) head_dim) the QKV projection's output; k_cache, v_cache (n_ctx, n_head_kv,
head_dim); cos, sin (n_ctx, rope_dim // 2); the result (T, n_head head_dim) float32. Query head h reads key/value
head h // (n_head // n_head_kv) (grouped-query attention, each key/value head read once for its whole group).

What some architectures add (`HeadOptions`, as the CPU's `kernels/cpu_layer.attend`): Q/K/V biases added to qkv
(qwen2), each Q and K head RMS-normed before RoPE (qwen3, gemma3), queries scaled by a query scale (Gemma 3 27B),
and a sliding window: a query at position p attends to positions p - window + 1 .. p only (gemma3's local layers).
RoPE rotates adjacent pairs (2j, 2j + 1): NEOX models' Q and K rows are reordered at upload (`runtime/rope_rows.py`),
as the CPU side's are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..reference.model import apply_rope, rms_norm

WINDOW = 256  # cache positions one step of the online softmax reads


@dataclass(frozen=True)
class HeadOptions:
    """What a layer's attention adds to LLaMA's (the module doc); the defaults add nothing."""

    bias: torch.Tensor | None = None  # (q_rows + 2 kv_rows,) float32: Q, K and V biases in qkv's row order
    q_norm: torch.Tensor | None = None  # (head_dim,) float32: each query head's RMSNorm weight (with k_norm)
    k_norm: torch.Tensor | None = None  # (head_dim,) float32: each key head's
    eps: float = 1e-6  # the head norms' epsilon
    query_scale: float = 1.0  # queries multiplied by this after RoPE
    window: int = 0  # positions a query attends to, its own included (0: all before it)


LLAMA = HeadOptions()


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, start_pos: int, n_head: int, position: torch.Tensor | None = None,
                     scratch=None, options: HeadOptions = LLAMA, advance: bool = False) -> torch.Tensor:
    """Attention of the T positions start_pos.. (RoPE, then their K/V stored in the caches) over positions 0..end
    (within `options.window`). `position` and `scratch` (the kernels' device copy of start_pos, their buffers) are
    not read here; `advance` with a position: 1 is added to it, as the kernels do."""
    if advance and position is not None:
        position.add_(1)
    q = rope_and_store(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, options)
    return attend(q, k_cache, v_cache, start_pos, options.query_scale, options.window)


def rope_and_store(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, start_pos: int, n_head: int, options: HeadOptions = LLAMA) -> torch.Tensor:
    """The rotated queries (T, n_head, head_dim) float32; the rotated keys and the values written into the caches
    (biases added and heads normed first, where `options` has them)."""
    n, n_kv, head_dim = qkv.shape[0], k_cache.shape[1], k_cache.shape[2]
    q_rows, kv_rows = n_head * head_dim, n_kv * head_dim
    end = start_pos + n
    c, s = cos[start_pos:end], sin[start_pos:end]
    if options.bias is not None:
        qkv = qkv + options.bias
    q = qkv[:, :q_rows].reshape(n, n_head, head_dim)
    k = qkv[:, q_rows:q_rows + kv_rows].reshape(n, n_kv, head_dim)
    if options.q_norm is not None:
        q, k = rms_norm(q, options.q_norm, options.eps), rms_norm(k, options.k_norm, options.eps)
    k_cache[start_pos:end] = apply_rope(k, c, s)
    v_cache[start_pos:end] = qkv[:, q_rows + kv_rows:].reshape(n, n_kv, head_dim)
    return apply_rope(q, c, s)


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start_pos: int, query_scale: float = 1.0,
           window: int = 0) -> torch.Tensor:
    """q (T, n_head, head_dim) of positions start_pos..end-1, causal over the caches' positions 0..end-1 (with a
    `window`, a query at p over p - window + 1..p), scores scaled by query_scale / sqrt(head_dim)."""
    n, n_head, head_dim = q.shape
    n_ctx, n_kv = k_cache.shape[0], k_cache.shape[1]
    group, end = n_head // n_kv, start_pos + n
    grouped = q.reshape(n, n_kv, group, head_dim).permute(1, 2, 0, 3).reshape(n_kv, group * n, head_dim)
    grouped = grouped * (query_scale / math.sqrt(head_dim))  # (n_kv, group T, head_dim), rows (g, t)
    query_pos = (start_pos + torch.arange(n, device=q.device)).repeat(group)[:, None]  # (group T, 1)
    width = min(WINDOW, n_ctx)
    best = torch.full((n_kv, group * n, 1), -math.inf, device=q.device)
    total = torch.zeros((n_kv, group * n, 1), device=q.device)
    acc = torch.zeros((n_kv, group * n, head_dim), device=q.device)
    oldest = max(start_pos - window + 1, 0) if window > 0 else 0  # the first position any of the queries reads
    for first in range(oldest, end, width):
        shift = min(first, n_ctx - width)  # the window [shift, shift + width) lies in the cache
        keys = k_cache[shift:shift + width].permute(1, 2, 0).float()  # (n_kv, head_dim, width): a view if float32
        values = v_cache[shift:shift + width].transpose(0, 1).float()  # (n_kv, width, head_dim)
        positions = torch.arange(shift, shift + width, device=q.device)[None, :]
        live = (positions >= first) & (positions <= query_pos)  # (group T, width): this step's, causal
        if window > 0:
            live &= positions > query_pos - window
        scores = torch.matmul(grouped, keys).masked_fill_(~live, -math.inf)  # (n_kv, group T, width)
        new_best = torch.maximum(best, scores.amax(-1, keepdim=True))
        if window > 0:  # a query whose window starts past this step has no live score yet: its maximum stays -inf
            new_best = new_best.clamp_min_(torch.finfo(new_best.dtype).min)
        weights = scores.sub_(new_best).exp_()
        rescale = best.sub_(new_best).exp_()
        total.mul_(rescale).add_(weights.sum(-1, keepdim=True))
        acc.mul_(rescale).add_(torch.matmul(weights, values))
        best = new_best
        del keys, values, positions, live, scores, weights, rescale  # each step's temporaries gone before the next
    out = (acc / total).reshape(n_kv, group, n, head_dim).permute(2, 0, 1, 3)  # (T, n_kv, group, head_dim)
    return out.reshape(n, n_head * head_dim)
