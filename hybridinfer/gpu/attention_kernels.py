"""The GPU side's attention step for one new position as one Triton kernel (flash-decoding);
`attention_reference.py` is its torch twin (same function, same result) and serves several positions at once (a
prompt).

    _attention_kernel  program (kv head, split): the group's queries and the new key (their biases added and each
                       head RMS-normed where the model has them), rotated (RoPE) in registers; the split whose share
                       holds the new position writes its key and value into the float16 (or float32) cache, which its
                       threads then read back as any cached position (a barrier between); then the online softmax
                       over the split's share of positions 0..pos (pos - window + 1..pos on a sliding-window layer),
                       read in place in tiles of BLOCK_N positions, each key/value tile read once for the whole group
                       of query heads.
                       Its partial result stored, a program takes a ticket on its kv head's counter; the last of the
                       head's splits merges them for the group's query heads (`_combine`: the split-K GEMV's one-pass
                       sum, `kernel_common._last_share`). With ADVANCE, the last kv head to finish also adds 1 to the
                       device position, which every program has read by then (the token's last layer: the next
                       token's position without a write of its own)

The position is read from a device tensor, and the grid and every buffer have fixed shapes: the kernel can be
captured in a CUDA graph and replayed at any position. The bytes a step reads grow with the positions used; it
allocates nothing that does (the partial results are (n_head_kv, splits, group, head_dim), the splits fixed by the
heads and the cache's length: `splits_for`, `shares`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import attention_reference

TARGET_PROGRAMS = 512  # about how many programs (key/value heads x position shares) a long context's launch has
MAX_SPLITS = 64  # the most position shares per key/value head
COMBINE_CHUNK = tl.constexpr(16)  # splits the merge of a head's partial results reads at a time
# positions a loop step reads and warps a program has, per cache type: of those tried, the fewest SASS instructions
# per cached element for sm_90 without a spill (`compile_step_kernels`; docs/hybrid.md)
TILES = {torch.float16: (64, 4), torch.float32: (32, 4)}


def splits_for(n_head_kv: int) -> int:
    """Position shares per key/value head (programs per head): a power of two from 4 to MAX_SPLITS, about
    TARGET_PROGRAMS programs in all, so that a grouped-query model's few key/value heads still fill the GPU at long
    contexts (LLaMA-2 13B's 40 heads: 16; 8 heads: 64)."""
    return min(MAX_SPLITS, max(4, triton.next_power_of_2(triton.cdiv(TARGET_PROGRAMS, n_head_kv))))


def shares(scratch: "Scratch", k_cache: torch.Tensor) -> int:
    """The position shares a launch over this cache uses: the scratch's, but no more than the cache's capacity has
    tiles (rounded up to a power of two), as more would never hold a position. Fixed for a run's cache."""
    tiles = triton.cdiv(k_cache.shape[0], TILES[k_cache.dtype][0])
    return min(scratch.splits, triton.next_power_of_2(tiles))


@triton.jit
def _head(qkv_ptr, bias_ptr, norm_ptr, cos_ptr, sin_ptr, at, pos, d, live, eps, HEAD_DIM: tl.constexpr,
          ROPE_DIM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr):
    """Heads (rows, HEAD_DIM_P2) float32, row r's element d at qkv_ptr + at[r] + d: + their biases (bias_ptr + the
    same offsets) if HAS_BIAS, each RMS-normed with the weight (HEAD_DIM,) at norm_ptr if HAS_NORM, then rotated
    at position pos: pairs (2j, 2j+1) of the first ROPE_DIM."""
    x = tl.load(qkv_ptr + at + d, mask=live, other=0.0).to(tl.float32)
    partner = tl.load(qkv_ptr + at + (d ^ 1), mask=live, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + at + d, mask=live, other=0.0)
        partner += tl.load(bias_ptr + at + (d ^ 1), mask=live, other=0.0)
    if HAS_NORM:
        inverse = (1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps))[:, None]  # (rows, 1)
        x = x * inverse * tl.load(norm_ptr + d, mask=live, other=0.0)
        partner = partner * inverse * tl.load(norm_ptr + (d ^ 1), mask=live, other=0.0)
    in_rope = live & (d < ROPE_DIM)
    c = tl.load(cos_ptr + pos * (ROPE_DIM // 2) + d // 2, mask=in_rope, other=1.0)
    s = tl.load(sin_ptr + pos * (ROPE_DIM // 2) + d // 2, mask=in_rope, other=0.0)
    return x * c + tl.where(d % 2 == 0, -partner, partner) * s


@triton.jit
def _attention_kernel(qkv_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, best_ptr, total_ptr, acc_ptr, counter_ptr,
                      out_ptr, bias_ptr, q_norm_ptr, k_norm_ptr, scale, eps, window, N_HEAD_KV: tl.constexpr,
                      GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, ROPE_DIM: tl.constexpr, GROUP_P2: tl.constexpr,
                      HEAD_DIM_P2: tl.constexpr, SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
                      HAS_BIAS: tl.constexpr, HAS_NORM: tl.constexpr, ADVANCE: tl.constexpr):
    """out (n_head * HEAD_DIM,) float32; best, total (N_HEAD_KV, SPLITS, GROUP_P2), acc (.., HEAD_DIM_P2): each
    split's running max, sum, values; counter_ptr (N_HEAD_KV + 1,) int32 zeros, left zero. bias_ptr (q_rows + 2
    kv_rows,) read if HAS_BIAS, q_norm_ptr and k_norm_ptr (HEAD_DIM,) if HAS_NORM; window > 0: positions pos - window
    + 1..pos only; ADVANCE: *pos_ptr += 1 once every program has read it. A float16 cache: the two products on
    tensor cores, the queries and the softmax weights rounded to float16, the sums float32 (as llama.cpp's CUDA flash
    attention); a float32 cache (the exact option): float32 products."""
    HALF_DOTS: tl.constexpr = k_ptr.dtype.element_ty == tl.float16
    kv = tl.program_id(0)
    split = tl.program_id(1)
    pos = tl.load(pos_ptr).to(tl.int64)
    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, HEAD_DIM_P2)
    g_live, d_live = g < GROUP, d < HEAD_DIM
    q_rows: tl.constexpr = N_HEAD_KV * GROUP * HEAD_DIM
    row: tl.constexpr = N_HEAD_KV * HEAD_DIM  # a cache position's elements
    q = _head(qkv_ptr, bias_ptr, q_norm_ptr, cos_ptr, sin_ptr, (kv * GROUP + g[:, None]) * HEAD_DIM, pos,
              d[None, :], g_live[:, None] & d_live[None, :], eps, HEAD_DIM, ROPE_DIM, HAS_BIAS,
              HAS_NORM) * scale  # (GROUP_P2, HEAD_DIM_P2)
    k_new = _head(qkv_ptr, bias_ptr, k_norm_ptr, cos_ptr, sin_ptr, tl.full([1, 1], q_rows + kv * HEAD_DIM, tl.int32),
                  pos, d[None, :], d_live[None, :], eps, HEAD_DIM, ROPE_DIM, HAS_BIAS, HAS_NORM)
    k_new = tl.reshape(k_new, [HEAD_DIM_P2])
    v_new = tl.load(qkv_ptr + q_rows + row + kv * HEAD_DIM + d, mask=d_live, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v_new += tl.load(bias_ptr + q_rows + row + kv * HEAD_DIM + d, mask=d_live, other=0.0)
    if HALF_DOTS:
        q = q.to(tl.float16)
    oldest = tl.where(window > 0, tl.maximum(pos + 1 - window, 0), 0)  # the first position attended to
    share = tl.cdiv(tl.cdiv(pos + 1 - oldest, SPLITS), BLOCK_N) * BLOCK_N
    lo = oldest + split * share
    hi = tl.minimum(lo + share, pos + 1)
    if (lo <= pos) & (pos < hi):  # the split that reads the new position writes it, then reads it as cached
        tl.store(k_ptr + pos * row + kv * HEAD_DIM + d, k_new.to(k_ptr.dtype.element_ty), mask=d_live)
        tl.store(v_ptr + pos * row + kv * HEAD_DIM + d, v_new.to(v_ptr.dtype.element_ty), mask=d_live)
    tl.debug_barrier()  # the program's stores seen by all its threads' loads
    best = tl.full([GROUP_P2], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, HEAD_DIM_P2], tl.float32)
    for first in range(lo, hi, BLOCK_N):
        p = first + tl.arange(0, BLOCK_N)
        cached = (p < hi)[:, None] & d_live[None, :]
        at = p[:, None] * row + kv * HEAD_DIM + d[None, :]
        keys = tl.load(k_ptr + at, mask=cached, other=0.0)  # (BLOCK_N, HEAD_DIM_P2) in the cache's type
        values = tl.load(v_ptr + at, mask=cached, other=0.0)
        if HALF_DOTS:  # (GROUP_P2, BLOCK_N)
            scores = tl.dot(q, tl.trans(keys))
        else:
            scores = tl.dot(q, tl.trans(keys), input_precision="ieee")
        scores = tl.where((p < hi)[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        weights = tl.exp(scores - new_best[:, None])
        rescale = tl.exp(best - new_best)
        total = total * rescale + tl.sum(weights, axis=1)
        if HALF_DOTS:
            acc = acc * rescale[:, None] + tl.dot(weights.to(tl.float16), values)
        else:
            acc = acc * rescale[:, None] + tl.dot(weights, values, input_precision="ieee")
        best = new_best
    at = (kv * SPLITS + split) * GROUP_P2 + g  # the group's own heads only, not tl.dot's padding rows
    tl.store(best_ptr + at, best, mask=g_live)
    tl.store(total_ptr + at, total, mask=g_live)
    tl.store(acc_ptr + at[:, None] * HEAD_DIM_P2 + d[None, :], acc, mask=g_live[:, None])
    tl.debug_barrier()  # every thread's partial stored (and the position read) before the ticket (released by it)
    if tl.atomic_add(counter_ptr + kv, 1) == SPLITS - 1:  # the head's last split: every split's partial is stored
        tl.atomic_xchg(counter_ptr + kv, 0)
        _combine(best_ptr, total_ptr, acc_ptr, out_ptr, kv, GROUP, HEAD_DIM, GROUP_P2, HEAD_DIM_P2, SPLITS)
        if ADVANCE:
            if tl.atomic_add(counter_ptr + N_HEAD_KV, 1) == N_HEAD_KV - 1:  # the last head: every program is done
                tl.atomic_xchg(counter_ptr + N_HEAD_KV, 0)
                tl.store(pos_ptr, (pos + 1).to(tl.int32))


@triton.jit
def _combine(best_ptr, total_ptr, acc_ptr, out_ptr, kv, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
             GROUP_P2: tl.constexpr, HEAD_DIM_P2: tl.constexpr, SPLITS: tl.constexpr):
    """out[head] (HEAD_DIM,) for the query heads of key/value head kv: their splits' partial results merged, read
    past L1 (other programs stored them), COMBINE_CHUNK splits at a time (few registers, however many splits)."""
    CHUNK: tl.constexpr = min(SPLITS, COMBINE_CHUNK)
    s = tl.arange(0, CHUNK)
    d = tl.arange(0, HEAD_DIM_P2)
    for g in range(0, GROUP):
        bests = tl.load(best_ptr + (kv * SPLITS + tl.arange(0, SPLITS)) * GROUP_P2 + g, cache_modifier=".cg")
        top = tl.max(bests, axis=0)  # over the splits (-inf for a split with no positions)
        total = tl.zeros([CHUNK], tl.float32)
        out = tl.zeros([HEAD_DIM_P2], tl.float32)
        for first in range(0, SPLITS, CHUNK):
            at = (kv * SPLITS + first + s) * GROUP_P2 + g
            best = tl.load(best_ptr + at, cache_modifier=".cg")  # (CHUNK,)
            weight = tl.where(best > float("-inf"), tl.exp(best - top), 0.0)
            total += weight * tl.load(total_ptr + at, cache_modifier=".cg")
            acc = tl.load(acc_ptr + at[:, None] * HEAD_DIM_P2 + d[None, :], cache_modifier=".cg")
            out += tl.sum(weight[:, None] * acc, axis=0)
        tl.store(out_ptr + (kv * GROUP + g) * HEAD_DIM + d, out / tl.sum(total, axis=0), mask=d < HEAD_DIM)


class Scratch:
    """The fixed buffers of one attention step (shared by the layers: they run one after another)."""

    def __init__(self, n_head: int, n_head_kv: int, head_dim: int, device: torch.device, splits: int | None = None):
        """`splits`: position shares per key/value head, a power of two (`splits_for`'s if None)."""
        # tl.dot's tiles are at least 16 wide: a group of query heads is padded to 16 rows
        group_p2 = max(16, triton.next_power_of_2(n_head // n_head_kv))
        head_dim_p2 = max(16, triton.next_power_of_2(head_dim))
        self.splits = splits or splits_for(n_head_kv)
        if self.splits & (self.splits - 1):
            raise ValueError(f"splits must be a power of two, not {self.splits}")
        self.best = torch.empty((n_head_kv, self.splits, group_p2), dtype=torch.float32, device=device)
        self.total = torch.empty_like(self.best)
        self.acc = torch.empty((n_head_kv, self.splits, group_p2, head_dim_p2), dtype=torch.float32, device=device)
        self.out = torch.empty((1, n_head * head_dim), dtype=torch.float32, device=device)
        self.counters = torch.zeros(n_head_kv + 1, dtype=torch.int32, device=device)  # tickets; each launch leaves 0
        self.position = torch.zeros(1, dtype=torch.int32, device=device)


_scratch: dict[tuple, Scratch] = {}


def scratch_for(n_head: int, n_head_kv: int, head_dim: int, device: torch.device) -> Scratch:
    key = (n_head, n_head_kv, head_dim, str(device))
    if key not in _scratch:
        _scratch[key] = Scratch(n_head, n_head_kv, head_dim, device)
    return _scratch[key]


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, start_pos: int, n_head: int, position: torch.Tensor | None = None,
                     scratch: Scratch | None = None,
                     options: attention_reference.HeadOptions = attention_reference.LLAMA,
                     advance: bool = False) -> torch.Tensor:
    """`attention_reference.decode_attention`; one position (T == 1) by the kernel, several by the twin.
    `position`: the position as a device int32 tensor (1,) (a CUDA graph's input), else start_pos is written to
    the scratch's; `advance`: the given position is then advanced by 1 on the device, by the same kernel;
    `scratch`: the caller's buffers (a GPU side owns its own), else ones shared per shape. The result is the
    scratch's output buffer, overwritten by the next call."""
    if qkv.shape[0] != 1:
        return attention_reference.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head,
                                                    options=options)
    n_kv, head_dim = k_cache.shape[1], k_cache.shape[2]
    scratch = scratch or scratch_for(n_head, n_kv, head_dim, qkv.device)
    if position is None:
        position, advance = scratch.position, False
        position.fill_(start_pos)
    group = n_head // n_kv
    group_p2, head_dim_p2 = scratch.best.shape[2], scratch.acc.shape[3]
    o = options
    has_bias, has_norm = o.bias is not None, o.q_norm is not None
    block_n, num_warps = TILES[k_cache.dtype]
    splits = shares(scratch, k_cache)
    _attention_kernel[(n_kv, splits)](qkv.contiguous(), k_cache, v_cache, cos, sin, position, scratch.best,
                                      scratch.total, scratch.acc, scratch.counters, scratch.out,
                                      o.bias if has_bias else qkv, o.q_norm if has_norm else qkv,
                                      o.k_norm if has_norm else qkv, o.query_scale / math.sqrt(head_dim), o.eps,
                                      o.window, N_HEAD_KV=n_kv, GROUP=group, HEAD_DIM=head_dim,
                                      ROPE_DIM=cos.shape[1] * 2, GROUP_P2=group_p2, HEAD_DIM_P2=head_dim_p2,
                                      SPLITS=splits, BLOCK_N=block_n, HAS_BIAS=has_bias, HAS_NORM=has_norm,
                                      ADVANCE=bool(advance), num_warps=num_warps, enable_fp_fusion=True)
    return scratch.out
