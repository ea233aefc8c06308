"""Triton kernels for the GPU side, reading DeviceMatrix fields as stored (`weights.py`); same functions,
signatures and results as `reference.py`. Modelled on PowerInfer's / ProSparse's sparse GPU operators:

    matvec (T == 1)  GEMV: program (i, k) takes a tile of BLOCK_R rows and the k-th share of the columns (split-K:
                     narrow matrices get enough programs to fill the GPU), looping over the columns a tile at a time;
                     each share stores its partial sums and takes an atomic ticket per tile, and the tile's last
                     share adds them in a fixed order (`_finish`: the result does not depend on scheduling)
    norm_matvec      the GEMV of RMSNorm(x) (and gate_up's `norm`): each program computes the inverse RMS of the
                     whole x, multiplies x tiles by the norm weight as it loads them (Q4_1: staged in its scratch,
                     `_q4_1_prologue`) and scales its dot; one launch for a norm and the projection that reads it
    hot_ffn          S2: each program compacts its chunk's candidate rows (the mask) into a list, then takes them
                     BLOCK_R at a time: gate rows . x, FATReLU, then up rows . x only for the rows that fired (the
                     others masked, or in Q4_0/Q4_1/Q8_0 pointed at a fired row: their up bytes are never read)
                     -> h (n_hot,); then
                     S3: out = sum_i h_i * down_t[i], each program a tile of output columns and a share of the rows,
                     which it compacts to the rows with h_i != 0 before loading any weight; shares added on the host

How a tile is decoded depends on the format (`tile_decoders.py`).

Batches (matvec with T > 1, hidden_dense, down_t_product) dequantize in row chunks and use the BLAS / cuBLAS
matmul, as llama.cpp does for prompts: they are `reference`'s functions.

Under TRITON_INTERPRET=1 the kernels run on CPU tensors (the tests); compiled, on CUDA tensors.
`compile_check.py` compiles them for sm_90 and counts their inner loops' instructions per weight.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import HybridInferError
from ..model_file import weight_formats
from . import reference
from .reference import down_t_product, hidden_dense  # noqa: F401  (batched forms: see the module doc)
from .tile_decoders import _Q4_1, _Q8_0, WORD_UNITS, _block_x_sums, _field, _q4_1_prologue, _row_dots, _weights
from .weights import GPU_FORMATS, WORD_FORMATS, DeviceMatrix

# what a GEMV or S3 does with its result (`_epilogue`), and the dense FFN's activations (`_activation`)
_STORE, _RELU, _AT_LEAST, _ADD = (tl.constexpr(k) for k in range(4))
_FATRELU, _SILU, _GELU = (tl.constexpr(k) for k in range(3))
ACTIVATIONS = {"relu": 0, "fatrelu": 0, "silu": 1, "gelu": 2}
COPY_BLOCK = tl.constexpr(128)  # elements a GEMV program copies at a time beside its work (`_gemv_kernel`'s COPY)
NORM_BLOCK = tl.constexpr(128)  # elements a program squares at a time for an RMSNorm prologue (`_inverse_rms`)

BLOCK_R = 32  # rows a GEMV program, an S2 step or an S3 step takes
BLOCK_C = 64  # columns a loop step takes in the other formats (GEMV, S2), and an S3 program's tile in them
CHUNK = 128  # rows an S2 program compacts; rows an S3 program compacts at a time
NUM_WARPS = 2  # GEMV, S2, and S3 in the other formats: a thread takes 4 rows of a 32-row tile
S3_ROWS = 8  # compacted rows an S3 step takes in Q4_0/Q4_1/Q8_0: one a warp
S3_COLUMNS = 2048  # columns an S3 program takes in Q4_0/Q4_1/Q8_0 (Q4: 2 units a thread, Q8_0: 4)
S3_WARPS = 8
S3_MAX_SHARES = 64  # row shares of an S3 launch in Q4_0/Q4_1/Q8_0: each writes a (cols,) float32 partial sum
MIN_SPLIT_STEPS = 2  # the fewest column steps a split-K share takes
TARGET_PROGRAMS = 1024  # about how many programs a GEMV or S3 launch should have to fill the GPU
# every launch's compile options: no software pipelining (it would stage loads through shared memory), and mul + add
# fused into FFMA as Triton 3.9 does by default (its default turns to unfused in 3.10)
LAUNCH = {"num_stages": 1, "enable_fp_fusion": True}


def tile_columns(qtype) -> int:
    """Columns a GEMV/S2 loop step takes for a matrix of `qtype`."""
    if qtype in WORD_FORMATS:
        return int(WORD_UNITS) * 32 // (WORD_FORMATS[qtype] // 4)
    return BLOCK_C


@triton.jit
def _last_share(counter_ptr):
    """Split-K in one pass: after a program has stored its share's partial sums, whether it is the last of the
    programs on its tile (program axis 0) to have done so (one atomic ticket a program, on a counter per tile that
    the last one sets back to 0 for the next launch); that one adds the shares (`_shares_sum`) and writes the
    result. The order of the sum does not depend on scheduling."""
    tl.debug_barrier()  # every thread's partial stored before the ticket (released by the atomic)
    ticket = tl.atomic_add(counter_ptr + tl.program_id(0), 1)
    last = ticket == tl.num_programs(1) - 1
    if last:
        tl.atomic_xchg(counter_ptr + tl.program_id(0), 0)
    return last


@triton.jit
def _shares_sum(partial_ptr, index, live, stride):
    """sum over the shares k (program axis 1) of partial[k * stride + index], in share order, read past L1."""
    total = tl.load(partial_ptr + index, mask=live, other=0.0, cache_modifier=".cg")
    for k in range(1, tl.num_programs(1)):
        total += tl.load(partial_ptr + k * stride + index, mask=live, other=0.0, cache_modifier=".cg")
    return total


@triton.jit
def _finish(value, index, live, n, partial_ptr, counter_ptr, out_ptr, scale, SPLIT: tl.constexpr,
            EPILOGUE: tl.constexpr):
    """A program's sums `value` of outputs `index` (of n): through the epilogue at once, or (SPLIT) stored as its
    split-K share, the tile's last program adding the shares and applying the epilogue."""
    if SPLIT:
        tl.store(partial_ptr + tl.program_id(1) * n + index, value, mask=live)
        if _last_share(counter_ptr):
            _epilogue(_shares_sum(partial_ptr, index, live, n), index, live, out_ptr, scale, EPILOGUE)
    else:
        _epilogue(value, index, live, out_ptr, scale, EPILOGUE)


@triton.jit
def _epilogue(value, index, live, out_ptr, scale, EPILOGUE: tl.constexpr):
    """Write a GEMV's (or S3's) result: out[index] = value (_STORE), max(value, 0) (_RELU), value >= scale as int8
    (_AT_LEAST), or out[index] += scale * value (_ADD: the residual add)."""
    if EPILOGUE == _STORE:
        tl.store(out_ptr + index, value, mask=live)
    elif EPILOGUE == _RELU:
        tl.store(out_ptr + index, tl.maximum(value, 0.0), mask=live)
    elif EPILOGUE == _AT_LEAST:
        tl.store(out_ptr + index, (value >= scale).to(tl.int8), mask=live)
    else:
        tl.store(out_ptr + index, tl.load(out_ptr + index, mask=live, other=0.0) + scale * value, mask=live)


@triton.jit
def _activation(g, threshold, ACT: tl.constexpr):
    """The FFN's activation of gate values g: FATReLU (g if g >= threshold else 0; ReLU at 0), SiLU or GELU (tanh
    approximation: 0.5 (1 + tanh y) = sigmoid(2 y))."""
    if ACT == _FATRELU:
        a = tl.where(g >= threshold, g, 0.0)
    elif ACT == _SILU:
        a = g / (1.0 + tl.exp(-g))
    else:
        a = g / (1.0 + tl.exp(-1.5957691216057308 * (g + 0.044715 * g * g * g)))
    return a


@triton.jit
def _inverse_rms(x_ptr, n, eps):
    """1 / sqrt(mean(x[:n]^2) + eps): RMSNorm's scale of a whole vector (n_embd long), which each program that needs
    it computes on its own (no launch, no wait for another program)."""
    total = tl.zeros([NORM_BLOCK], dtype=tl.float32)
    for start in range(0, n, NORM_BLOCK):
        i = start + tl.arange(0, NORM_BLOCK)
        x = tl.load(x_ptr + i, mask=i < n, other=0.0)
        total += x * x
    return 1.0 / tl.sqrt(tl.sum(total, axis=0) / n + eps)


@triton.jit
def _gemv_kernel(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, sums_ptr, partial_ptr, counter_ptr, out_ptr, rows, cols,
                 cols_per_split, low_bits, scale, copy_from, copy_to, copy_n, norm_ptr, eps, FMT: tl.constexpr,
                 EPILOGUE: tl.constexpr, SPLIT: tl.constexpr, COPY: tl.constexpr, NORM: tl.constexpr,
                 COPY_NORM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out (rows,) = epilogue(W @ x) (`_epilogue`); program (i, k) takes rows [i*BLOCK_R, (i+1)*BLOCK_R) of the
    k-th share of the columns (program axis 1). SPLIT: several shares, their partial sums in partial_ptr (splits,
    rows), added by the tile's last program (`_last_share`). sums_ptr (programs, cols_per_split / 32): Q4_1's
    scratch for the sums of x per block. COPY: the share-0 programs also copy copy_from[:copy_n] to copy_to (float32),
    COPY_BLOCK elements at a time (a split FFN stages its input beside the predicted mask: one copy to the host);
    COPY_NORM: RMS-normed on the way with the weight norm_ptr (copy_to = RMSNorm(copy_from), the FFN's norm).
    NORM: out = epilogue(W @ RMSNorm(x)) with the weight norm_ptr, the norm in the prologue: each program computes
    the inverse RMS of the whole x itself, its loop multiplies each x tile by the weight as it loads it, and the
    dot is scaled by the inverse RMS (an attention's norm and Q/K/V, or a dense FFN's norm and gate/up, one
    launch)."""
    if COPY:
        if tl.program_id(1) == 0:
            if COPY_NORM:
                copy_scale = _inverse_rms(copy_from, copy_n, eps)
            for start in range(tl.program_id(0) * COPY_BLOCK, copy_n, tl.num_programs(0) * COPY_BLOCK):
                i = start + tl.arange(0, COPY_BLOCK)
                value = tl.load(copy_from + i, mask=i < copy_n)
                if COPY_NORM:
                    value = value * copy_scale * tl.load(norm_ptr + i, mask=i < copy_n)
                tl.store(copy_to + i, value, mask=i < copy_n)
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_matrix = r < rows
    c_first = tl.multiple_of(tl.program_id(1) * cols_per_split, BLOCK_C)  # split_k: whole tiles (BLOCK_C divides them)
    c_last = tl.minimum(c_first + cols_per_split, cols)
    x_read, x_sums = x_ptr, sums_ptr
    if FMT == _Q4_1:  # the norm weight staged with the sums of x (`_q4_1_prologue`), else applied in the loop
        x_read, x_sums = _q4_1_prologue(x_ptr, norm_ptr, sums_ptr, c_first, c_last, cols_per_split, NORM)
    LOOP_NORM: tl.constexpr = NORM and FMT != _Q4_1
    last_row = tl.minimum(r, rows - 1)  # rows past the end read the last one, discarded
    out = _row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_read, norm_ptr, x_sums, last_row, in_matrix, cols, c_first,
                    c_last, low_bits, FMT, BLOCK_R, BLOCK_C, LOOP_NORM)
    if NORM:
        out = out * _inverse_rms(x_ptr, cols, eps)
    _finish(out, r, in_matrix, rows, partial_ptr, counter_ptr, out_ptr, scale, SPLIT, EPILOGUE)


@triton.jit
def _gate_up_kernel(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, sums_ptr,
                    partial_ptr, counter_ptr, out_ptr, rows, cols, cols_per_split, gate_bits, up_bits, threshold,
                    norm_ptr, eps, ACT: tl.constexpr, SPLIT: tl.constexpr, GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr,
                    NORM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out (rows,) = act(gate @ x) * (up @ x) (`_activation`), every row: the dense FFN's first half, `_gemv_kernel`'s
    tiles and split-K over both matrices; partial_ptr (splits, 2 rows): gate's partial sums, then up's. NORM: of
    RMSNorm(x) with the weight norm_ptr, in the prologue as `_gemv_kernel`'s."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_matrix = r < rows
    c_first = tl.multiple_of(tl.program_id(1) * cols_per_split, BLOCK_C)
    c_last = tl.minimum(c_first + cols_per_split, cols)
    x_read, x_sums = x_ptr, sums_ptr
    if GATE_FMT == _Q4_1 or UP_FMT == _Q4_1:
        x_read, x_sums = _q4_1_prologue(x_ptr, norm_ptr, sums_ptr, c_first, c_last, cols_per_split, NORM)
    LOOP_NORM: tl.constexpr = NORM and GATE_FMT != _Q4_1 and UP_FMT != _Q4_1
    last_row = tl.minimum(r, rows - 1)
    g = _row_dots(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, x_read, norm_ptr, x_sums, last_row, in_matrix, cols,
                  c_first, c_last, gate_bits, GATE_FMT, BLOCK_R, BLOCK_C, LOOP_NORM)
    u = _row_dots(uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_read, norm_ptr, x_sums, last_row, in_matrix, cols,
                  c_first, c_last, up_bits, UP_FMT, BLOCK_R, BLOCK_C, LOOP_NORM)
    if NORM:
        inverse = _inverse_rms(x_ptr, cols, eps)
        g, u = g * inverse, u * inverse
    if SPLIT:
        share = partial_ptr + tl.program_id(1) * 2 * rows
        tl.store(share + r, g, mask=in_matrix)
        tl.store(share + rows + r, u, mask=in_matrix)
        if _last_share(counter_ptr):
            g = _shares_sum(partial_ptr, r, in_matrix, 2 * rows)
            u = _shares_sum(partial_ptr, rows + r, in_matrix, 2 * rows)
            tl.store(out_ptr + r, _activation(g, threshold, ACT) * u, mask=in_matrix)
    else:
        tl.store(out_ptr + r, _activation(g, threshold, ACT) * u, mask=in_matrix)


@triton.jit
def _s2_kernel(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, sums_ptr,
               mask_ptr, index_ptr, list_ptr, out_ptr, fired_ptr, n, cols, threshold, gate_bits, up_bits,
               HAS_MASK: tl.constexpr, HAS_INDEX: tl.constexpr, GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """out (n,) = h = a * (up . x) with a = FATReLU(gate . x) where the mask allows, else 0: row i's mask byte is
    mask_ptr[i] (uint8), or with HAS_INDEX mask_ptr[index_ptr[i]] (the mask over every neuron, index_ptr the hot
    neurons' int64 indices); *fired_ptr (int64) += how many rows fired (a != 0), one atomic add a program. Program p
    compacts the candidates of rows [p*CHUNK, (p+1)*CHUNK) into list_ptr[p*CHUNK:] (int32 scratch) and takes them
    BLOCK_R at a time. sums_ptr (programs, cols / 32): Q4_1's scratch for the sums of x per block."""
    pid = tl.program_id(0)
    rows = pid * CHUNK + tl.arange(0, CHUNK)
    in_n = rows < n
    tl.store(out_ptr + rows, tl.zeros([CHUNK], dtype=tl.float32), mask=in_n)  # h = 0 unless it fires
    if HAS_MASK:
        at = rows
        if HAS_INDEX:
            at = tl.load(index_ptr + rows, mask=in_n, other=0)
        candidate = in_n & (tl.load(mask_ptr + at, mask=in_n, other=0) != 0)
        slot = tl.cumsum(candidate.to(tl.int32), axis=0) - 1
        tl.store(list_ptr + pid * CHUNK + slot, rows, mask=candidate)
        count = tl.sum(candidate.to(tl.int32), axis=0)
    else:
        count = tl.sum(in_n.to(tl.int32), axis=0)
    x_sums = sums_ptr
    if GATE_FMT == _Q4_1 or UP_FMT == _Q4_1:
        x_sums = sums_ptr + pid * (cols // 32)
        _block_x_sums(x_ptr, x_ptr, x_sums, x_sums, 0, cols // 32, False)
    tl.debug_barrier()  # the list, the zeros and the sums written before any thread reads the list or writes h
    fired_total = tl.sum(tl.zeros([BLOCK_R], dtype=tl.int32), axis=0)
    for j0 in range(0, count, BLOCK_R):
        j = j0 + tl.arange(0, BLOCK_R)
        live = j < count
        if HAS_MASK:
            r = tl.load(list_ptr + pid * CHUNK + j, mask=live, other=0)
        else:
            r = tl.minimum(pid * CHUNK + j, n - 1)
        # a slot past the count reads row 0 (or the chunk's last), discarded
        g = _row_dots(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, x_ptr, x_ptr, x_sums, r, live, cols, 0, cols,
                      gate_bits, GATE_FMT, BLOCK_R, BLOCK_C, False)
        fired = live & (g >= threshold) & (g != 0.0)
        n_fired = tl.sum(fired.to(tl.int32), axis=0)
        if n_fired > 0:  # up rows of the fired rows only: the others point at a fired row (no bytes of their own)
            r_up = tl.where(fired, r, tl.max(tl.where(fired, r, -1), axis=0))
            u = _row_dots(uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, x_ptr, x_sums, r_up, fired, cols, 0, cols,
                          up_bits, UP_FMT, BLOCK_R, BLOCK_C, False)
            tl.store(out_ptr + r, g * u, mask=fired)  # NaN if an unfired row's up bytes were read
        fired_total += n_fired
    tl.atomic_add(fired_ptr, fired_total.to(tl.int64))


@triton.jit
def _compact_live_rows(h_ptr, slots_ptr, first, last, CHUNK: tl.constexpr):
    """Write the rows i in [first, first + CHUNK) with i < last and h_i != 0 to slots_ptr[0:count] (int32, in order);
    return count. The caller waits (tl.debug_barrier) before reading the slots."""
    rows = first + tl.arange(0, CHUNK)
    live = (rows < last) & (tl.load(h_ptr + rows, mask=rows < last, other=0) != 0.0)
    tl.store(slots_ptr + tl.cumsum(live.to(tl.int32), axis=0) - 1, rows, mask=live)
    return tl.sum(live.to(tl.int32), axis=0)


@triton.jit
def _s3_kernel(q_ptr, d_ptr, m_ptr, hi_ptr, s_ptr, h_ptr, slots_ptr, partial_ptr, counter_ptr, out_ptr, n, cols,
               rows_per_share, scale, FMT: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """out (cols,) = epilogue(sum_i h_i * W[i]) (`_epilogue`: _STORE, or _ADD into the residual stream) for a format
    other than Q4_0/Q4_1/Q8_0: program (t, s) takes the columns of tile t and the rows of share s; rows with h_i == 0
    are not loaded (compacted away CHUNK rows at a time in the program's own slots, slots_ptr (programs, CHUNK)).
    SPLIT: several shares, their partial sums in partial_ptr (shares, cols), added by the tile's last program."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_row = c < cols
    first = tl.program_id(1) * rows_per_share
    last = tl.minimum(first + rows_per_share, n)
    slots = slots_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * CHUNK
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for chunk in range(first, last, CHUNK):
        count = _compact_live_rows(h_ptr, slots, chunk, last, CHUNK)
        tl.debug_barrier()
        for j0 in range(0, count, BLOCK_R):
            j = j0 + tl.arange(0, BLOCK_R)
            r = tl.load(slots + j, mask=j < count, other=0)
            h = tl.load(h_ptr + r, mask=j < count, other=0)
            w = _weights(q_ptr, d_ptr, m_ptr, hi_ptr, s_ptr, r.to(tl.int64)[:, None], c[None, :], (j < count)[:, None] &
                         in_row[None, :], cols, FMT)
            acc += h[:, None] * w
        tl.debug_barrier()  # every slot read before the next chunk's are written
    total = tl.sum(acc, axis=0)
    _finish(total, c, in_row, cols, partial_ptr, counter_ptr, out_ptr, scale, SPLIT, EPILOGUE)


@triton.jit
def _s3_word_rows(q_ptr, d_ptr, m_ptr, h_ptr, slots, j, count, n_units, u, low_bits, a0, a1, a2, a3, a4, a5, a6, a7,
                  a_m, FMT: tl.constexpr, TAIL: tl.constexpr):
    """Add h_i * W[i, units u] of the rows i = slots[j] (S3_ROWS slots) to the accumulators: a0..a7 (S3_ROWS,
    S3_UNITS, 4) one per field of a unit's words (Q8_0: a0..a3), a_m (S3_ROWS, S3_UNITS) h_i m_i (Q4_1). TAIL:
    slots j at or past count give 0 (their words unread). u: units within the row (a caller clamps them)."""
    U: tl.constexpr = 2 if FMT == _Q8_0 else 1  # 4-word units per block
    i = tl.arange(0, 4)
    if TAIL:
        r = tl.load(slots + j, mask=j < count, other=0)
        h = tl.load(h_ptr + r, mask=j < count, other=0)
    else:
        r = tl.load(slots + j)
        h = tl.load(h_ptr + r)
    words_at = q_ptr + r[:, None, None] * (n_units * 4) + u[None, :, None] * 4 + i[None, None, :]
    block = r[:, None] * (n_units // U) + (u // U)[None, :]
    if TAIL:
        live = (j < count)[:, None] & (u >= 0)[None, :]
        words = tl.load(words_at, mask=live[:, :, None], other=0)
        d = tl.load(d_ptr + block, mask=live, other=0)
    else:
        words = tl.load(words_at)
        d = tl.load(d_ptr + block)
    hd = (h[:, None] * d.to(tl.float32))[:, :, None]
    a0 += hd * _field(words, 0, FMT, low_bits)
    a1 += hd * _field(words, 1, FMT, low_bits)
    a2 += hd * _field(words, 2, FMT, low_bits)
    a3 += hd * _field(words, 3, FMT, low_bits)
    if U == 1:
        a4 += hd * _field(words, 4, FMT, low_bits)
        a5 += hd * _field(words, 5, FMT, low_bits)
        a6 += hd * _field(words, 6, FMT, low_bits)
        a7 += hd * _field(words, 7, FMT, low_bits)
    if FMT == _Q4_1:
        if TAIL:
            m = tl.load(m_ptr + block, mask=live, other=0)
        else:
            m = tl.load(m_ptr + block)
        a_m += h[:, None] * m.to(tl.float32)
    return a0, a1, a2, a3, a4, a5, a6, a7, a_m


@triton.jit
def _s3_words_kernel(q_ptr, d_ptr, m_ptr, h_ptr, slots_ptr, partial_ptr, counter_ptr, out_ptr, n, cols,
                     rows_per_share, low_bits, scale, FMT: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT: tl.constexpr,
                     S3_ROWS: tl.constexpr, S3_UNITS: tl.constexpr, CHUNK: tl.constexpr):
    """`_s3_kernel` for Q4_0/Q4_1/Q8_0 (q_ptr: int32 words): a program's tile is S3_UNITS 4-word units of columns
    (`_word_row_dots`), a loop step S3_ROWS compacted rows (whole steps in the loop, the rest in one masked step);
    each thread scales a unit's quants by h_i d_i once and keeps one accumulator per field."""
    U: tl.constexpr = 2 if FMT == _Q8_0 else 1  # 4-word units per block
    n_units = cols // 32 * U
    u = tl.program_id(0) * S3_UNITS + tl.arange(0, S3_UNITS)
    in_row = u < n_units
    u_read = tl.minimum(u, n_units - 1)  # a unit past the row reads the last one's bytes, never stored
    i = tl.arange(0, 4)
    first = tl.program_id(1) * rows_per_share
    last = tl.minimum(first + rows_per_share, n)
    slots = slots_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * CHUNK
    a0 = tl.zeros([S3_ROWS, S3_UNITS, 4], dtype=tl.float32)
    a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0
    a_m = tl.zeros([S3_ROWS, S3_UNITS], dtype=tl.float32)
    for chunk in range(first, last, CHUNK):
        count = _compact_live_rows(h_ptr, slots, chunk, last, CHUNK)
        tl.debug_barrier()
        whole = count // S3_ROWS * S3_ROWS
        for j0 in range(0, whole, S3_ROWS):
            a0, a1, a2, a3, a4, a5, a6, a7, a_m = _s3_word_rows(
                q_ptr, d_ptr, m_ptr, h_ptr, slots, j0 + tl.arange(0, S3_ROWS), count, n_units, u_read, low_bits,
                a0, a1, a2, a3, a4, a5, a6, a7, a_m, FMT, False)
        if whole < count:
            a0, a1, a2, a3, a4, a5, a6, a7, a_m = _s3_word_rows(
                q_ptr, d_ptr, m_ptr, h_ptr, slots, whole + tl.arange(0, S3_ROWS), count, n_units, u_read, low_bits,
                a0, a1, a2, a3, a4, a5, a6, a7, a_m, FMT, True)
        tl.debug_barrier()  # every slot read before the next chunk's are written
    columns = ((u // U) * 32 + (u % U) * 4)[:, None] + i[None, :]  # (units, 4): field 0 of each word
    m_sum = tl.sum(a_m, axis=0)[:, None]  # (units, 1): sum_i h_i m_i of each unit, added to each of its columns
    keep = in_row[:, None] & (i >= 0)[None, :]
    if SPLIT:
        share = partial_ptr + tl.program_id(1) * cols
        _s3_put(share, columns, keep, a0, a1, a2, a3, a4, a5, a6, a7, m_sum, scale, U, _STORE)
        if _last_share(counter_ptr):
            for p in tl.static_range(8 // U):
                at = columns + 4 * U * p
                _epilogue(_shares_sum(partial_ptr, at, keep, cols), at, keep, out_ptr, scale, EPILOGUE)
    else:
        _s3_put(out_ptr, columns, keep, a0, a1, a2, a3, a4, a5, a6, a7, m_sum, scale, U, EPILOGUE)


@triton.jit
def _s3_put(out_ptr, columns, keep, a0, a1, a2, a3, a4, a5, a6, a7, m_sum, scale, U: tl.constexpr,
            EPILOGUE: tl.constexpr):
    """`_epilogue` of the S3 words kernel's accumulators: field p of each unit's words at columns + 4 U p."""
    _epilogue(tl.sum(a0, axis=0) + m_sum, columns, keep, out_ptr, scale, EPILOGUE)
    _epilogue(tl.sum(a1, axis=0) + m_sum, columns + 4 * U, keep, out_ptr, scale, EPILOGUE)
    _epilogue(tl.sum(a2, axis=0) + m_sum, columns + 8 * U, keep, out_ptr, scale, EPILOGUE)
    _epilogue(tl.sum(a3, axis=0) + m_sum, columns + 12 * U, keep, out_ptr, scale, EPILOGUE)
    if U == 1:
        _epilogue(tl.sum(a4, axis=0) + m_sum, columns + 16, keep, out_ptr, scale, EPILOGUE)
        _epilogue(tl.sum(a5, axis=0) + m_sum, columns + 20, keep, out_ptr, scale, EPILOGUE)
        _epilogue(tl.sum(a6, axis=0) + m_sum, columns + 24, keep, out_ptr, scale, EPILOGUE)
        _epilogue(tl.sum(a7, axis=0) + m_sum, columns + 28, keep, out_ptr, scale, EPILOGUE)


def low_bits(qtype) -> int:
    """The kernels' run-time low_bits argument for a matrix of `qtype` (`_nibble`, `_byte`)."""
    return 255 if qtype == weight_formats.Q8_0.type else 15


def s3_columns(qtype) -> int:
    """Columns an S3 program takes for a down_t matrix of `qtype`."""
    return S3_COLUMNS if qtype in WORD_FORMATS else BLOCK_C


def s3_units(qtype) -> int:
    """4-word units an S3 program takes for a down_t matrix of Q4_0/Q4_1/Q8_0."""
    return S3_COLUMNS // 32 * (WORD_FORMATS[qtype] // 4)


def split_k(rows: int, cols: int, qtype, *qtypes) -> int:
    """Columns per share of a GEMV: all of them, or (narrow matrices) a whole number of loop steps, at least
    MIN_SPLIT_STEPS, so that about TARGET_PROGRAMS programs run. Several matrices read together (`qtypes`): steps
    of the widest tile."""
    step = max(tile_columns(q) for q in (qtype, *qtypes))
    steps = triton.cdiv(cols, step)
    shares = max(1, min(triton.cdiv(TARGET_PROGRAMS, triton.cdiv(rows, BLOCK_R)), steps // MIN_SPLIT_STEPS))
    return triton.cdiv(steps, shares) * step


def matvec(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = x @ W.T: the GEMV kernel for T == 1, reference.matvec else."""
    if x.shape[0] != 1:
        return reference.matvec(m, x)
    return _gemv(m, x, torch.empty((1, m.rows), dtype=torch.float32, device=x.device), _STORE, 0.0)


def norm_matvec(m: DeviceMatrix, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = RMSNorm(x, weight, eps) @ W.T: one kernel for T == 1, the norm in
    the GEMV's prologue (`_gemv_kernel`'s NORM)."""
    if x.shape[0] != 1:
        return reference.norm_matvec(m, x, weight, eps)
    return _gemv(m, x, torch.empty((1, m.rows), dtype=torch.float32, device=x.device), _STORE, 0.0,
                 norm=(weight, eps))


def matvec_relu(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = ReLU(x @ W.T), one kernel for T == 1."""
    if x.shape[0] != 1:
        return reference.matvec_relu(m, x)
    return _gemv(m, x, torch.empty((1, m.rows), dtype=torch.float32, device=x.device), _RELU, 0.0)


def matvec_at_least(m: DeviceMatrix, x: torch.Tensor, threshold: float, out: torch.Tensor | None = None,
                    copy: tuple[torch.Tensor, torch.Tensor] | None = None,
                    copy_norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) bool = x @ W.T >= threshold (written into `out` if given), one kernel for
    T == 1; copy (source, destination), float32 tensors of one size: the same kernel also copies source into
    destination, RMS-normed on the way where copy_norm (weight, eps) is given (a split FFN's input)."""
    if x.shape[0] != 1:
        return reference.matvec_at_least(m, x, threshold, out, copy, copy_norm)
    if out is None:
        out = torch.empty((1, m.rows), dtype=torch.bool, device=x.device)
    _gemv(m, x, out.view(torch.int8), _AT_LEAST, threshold, copy, copy_norm=copy_norm)
    return out


def add_matvec(out: torch.Tensor, m: DeviceMatrix, x: torch.Tensor, scale: float) -> torch.Tensor:
    """out (T, rows) float32 += scale * x @ W.T in place (the residual add of a down projection), one kernel for
    T == 1; returns out."""
    if x.shape[0] != 1:
        return reference.add_matvec(out, m, x, scale)
    return _gemv(m, x, out, _ADD, scale)


def gate_up(gate: DeviceMatrix, up: DeviceMatrix, x: torch.Tensor, activation: str, threshold: float,
            norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x (T, cols) float32 -> h (T, rows) float32 = act(x @ gate.T) * (x @ up.T), act `activation` ("silu", "gelu":
    its tanh approximation, "relu", "fatrelu": g where g >= threshold, else 0); one kernel for T == 1. norm (weight,
    eps): of RMSNorm(x) instead, the norm in the same kernel's prologue."""
    if x.shape[0] != 1:
        return reference.gate_up(gate, up, x, activation, threshold, norm)
    x = x.to(torch.float32).contiguous()
    out = torch.empty((1, gate.rows), dtype=torch.float32, device=x.device)
    if gate.rows == 0:
        return out
    cols_per_split = split_k(gate.rows, gate.cols, gate.qtype, up.qtype)
    shares = triton.cdiv(gate.cols, cols_per_split)
    row_tiles = triton.cdiv(gate.rows, BLOCK_R)
    partial = torch.empty((shares, 2 * gate.rows), dtype=torch.float32, device=x.device)
    sums = _x_sums_scratch(row_tiles * shares, cols_per_split, x, gate.qtype, up.qtype, staged=norm is not None)
    _gate_up_kernel[(row_tiles, shares)](*_fields(gate), *_fields(up), x, sums, partial, _counters(row_tiles, x.device),
                                         out, gate.rows, gate.cols, cols_per_split, low_bits(gate.qtype),
                                         low_bits(up.qtype), float(threshold), x if norm is None else norm[0],
                                         0.0 if norm is None else float(norm[1]), ACT=ACTIVATIONS[activation],
                                         SPLIT=shares > 1, GATE_FMT=GPU_FORMATS[gate.qtype].code,
                                         UP_FMT=GPU_FORMATS[up.qtype].code, NORM=norm is not None, BLOCK_R=BLOCK_R,
                                         BLOCK_C=BLOCK_C, num_warps=NUM_WARPS, **LAUNCH)
    return out


def _gemv(m: DeviceMatrix, x: torch.Tensor, out: torch.Tensor, epilogue, scale: float,
          copy: tuple[torch.Tensor, torch.Tensor] | None = None, norm: tuple[torch.Tensor, float] | None = None,
          copy_norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """One GEMV launch: x (1, cols) -> out (1, rows) written by `epilogue` (`_epilogue`), of RMSNorm(x) with norm
    (weight, eps) if given; copy: (source, destination) copied by the same launch, RMS-normed with copy_norm
    (weight, eps) if given (one of norm and copy_norm at most: the kernel reads one norm weight)."""
    x = x.to(torch.float32).contiguous()
    if norm is not None and copy_norm is not None:
        raise ValueError("a GEMV launch norms its input or its copy, not both")
    if m.rows == 0:
        if copy is not None:
            source = copy[0] if copy_norm is None else reference.rms_norm(copy[0], *copy_norm)
            copy[1].copy_(source.reshape(copy[1].shape))
        return out
    if copy is not None and (copy[0].numel() != copy[1].numel() or not copy[1].is_contiguous()):
        raise ValueError("the copy's source and destination must have one size, the destination contiguous")
    weight, eps = norm or copy_norm or (x, 0.0)
    source, destination = (x, x) if copy is None else (copy[0].contiguous(), copy[1])
    cols_per_split = split_k(m.rows, m.cols, m.qtype)
    shares = triton.cdiv(m.cols, cols_per_split)
    partial = torch.empty((shares, m.rows), dtype=torch.float32, device=x.device)
    row_tiles = triton.cdiv(m.rows, BLOCK_R)
    sums = _x_sums_scratch(row_tiles * shares, cols_per_split, x, m.qtype, staged=norm is not None)
    _gemv_kernel[(row_tiles, shares)](*_fields(m), x, sums, partial, _counters(row_tiles, x.device), out, m.rows,
                                      m.cols, cols_per_split, low_bits(m.qtype), float(scale), source, destination,
                                      source.numel(), weight, float(eps), FMT=GPU_FORMATS[m.qtype].code,
                                      EPILOGUE=epilogue, SPLIT=shares > 1, COPY=copy is not None, NORM=norm is not None,
                                      COPY_NORM=copy_norm is not None, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C,
                                      num_warps=NUM_WARPS, **LAUNCH)
    return out


def hot_ffn(gate: DeviceMatrix, up: DeviceMatrix, down_t: DeviceMatrix, x: torch.Tensor, mask: torch.Tensor | None,
            threshold: float, mask_index: torch.Tensor | None = None, fired: torch.Tensor | None = None,
            residual: torch.Tensor | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x (n_embd,) float32, mask (n_hot,) bool, or (n_ff,) bool with mask_index (n_hot,) int64 the hot
    neurons (row i's mask is mask[mask_index[i]]), or None (all candidates) -> (out (n_embd,) float32, fired: 0-dim
    int64, the number of neurons with a != 0). `fired` given: the count is added to it (in place) and it is
    returned; `residual` (n_embd,) given: residual += scale * out in place, and it is the out returned. The S2
    kernel, then the S3 kernel."""
    n, cols = gate.rows, down_t.cols
    x = x.to(torch.float32).contiguous()
    if fired is None:
        fired = torch.zeros((), dtype=torch.int64, device=x.device)
    if n == 0:
        return (torch.zeros(cols, dtype=torch.float32, device=x.device) if residual is None else residual), fired
    programs = triton.cdiv(n, CHUNK)
    h = torch.empty(n, dtype=torch.float32, device=x.device)
    candidates = torch.empty(programs * CHUNK if mask is not None else 1, dtype=torch.int32, device=x.device)
    mask_bytes = h if mask is None else mask.contiguous().view(torch.uint8)
    index = h if mask_index is None else mask_index
    sums = _x_sums_scratch(programs, gate.cols, x, gate.qtype, up.qtype)
    _s2_kernel[(programs,)](*_fields(gate), *_fields(up), x, sums, mask_bytes, index, candidates, h, fired, n,
                            gate.cols, float(threshold), low_bits(gate.qtype), low_bits(up.qtype),
                            HAS_MASK=mask is not None, HAS_INDEX=mask is not None and mask_index is not None,
                            GATE_FMT=GPU_FORMATS[gate.qtype].code, UP_FMT=GPU_FORMATS[up.qtype].code, BLOCK_R=BLOCK_R,
                            BLOCK_C=BLOCK_C, CHUNK=CHUNK, num_warps=NUM_WARPS, **LAUNCH)
    words = down_t.qtype in WORD_FORMATS
    column_tiles = triton.cdiv(cols, s3_columns(down_t.qtype))
    step = S3_ROWS if words else BLOCK_R
    steps = triton.cdiv(n, step)
    shares = max(1, min(steps, S3_MAX_SHARES if words else TARGET_PROGRAMS // column_tiles))
    rows_per_share = triton.cdiv(steps, shares) * step  # whole steps
    shares = triton.cdiv(n, rows_per_share)
    partial = torch.empty((shares, cols), dtype=torch.float32, device=x.device)
    slots = torch.empty(shares * column_tiles * CHUNK, dtype=torch.int32, device=x.device)
    out = torch.empty(cols, dtype=torch.float32, device=x.device) if residual is None else residual
    epilogue = _STORE if residual is None else _ADD
    counters = _counters(column_tiles, x.device)
    fmt = GPU_FORMATS[down_t.qtype].code
    if words:
        _s3_words_kernel[(column_tiles, shares)](*_fields(down_t)[:3], h, slots, partial, counters, out, n, cols,
                                                 rows_per_share, low_bits(down_t.qtype), float(scale), FMT=fmt,
                                                 EPILOGUE=epilogue, SPLIT=shares > 1, S3_ROWS=S3_ROWS,
                                                 S3_UNITS=s3_units(down_t.qtype), CHUNK=CHUNK, num_warps=S3_WARPS,
                                                 **LAUNCH)
    else:
        _s3_kernel[(column_tiles, shares)](*_fields(down_t), h, slots, partial, counters, out, n, cols,
                                          rows_per_share, float(scale), FMT=fmt, EPILOGUE=epilogue, SPLIT=shares > 1,
                                          BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, CHUNK=CHUNK, num_warps=NUM_WARPS,
                                          **LAUNCH)
    return out, fired


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(tiles: int, device: torch.device) -> torch.Tensor:
    """int32 (tiles,) zeros for `_last_share`, kept per device (each launch leaves them 0): allocated (one fill) only
    when a launch needs more than any before."""
    held = _COUNTERS.get(device)
    if held is None or held.numel() < tiles:
        held = _COUNTERS[device] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
    return held


def _x_sums_scratch(programs: int, cols: int, x: torch.Tensor, *qtypes, staged: bool = False) -> torch.Tensor:
    """float32 scratch for Q4_1's sums of x per block, (programs, cols / 32), after (programs, cols) for x times the
    norm weight where `staged` (`_q4_1_prologue`); x itself (never read) where no matrix is Q4_1."""
    if weight_formats.Q4_1.type not in qtypes:
        return x
    return torch.empty(programs * (cols // 32 + (cols if staged else 0)), dtype=torch.float32, device=x.device)


def _fields(m: DeviceMatrix) -> tuple[torch.Tensor, ...]:
    """(q, d, m, h, s) pointers of the kernels (q: int32 words for Q4_0/Q4_1/Q8_0); a field a format lacks is filled
    with a tensor the kernel never reads."""
    if m.values is not None:
        return (m.values,) * 5
    quants = m.quants
    if m.qtype in WORD_FORMATS:
        quants = quants.view(torch.int32)
        if quants.numel() >= 2**31:
            raise HybridInferError(f"a {m.rows} x {m.cols} {m.qtype.name} matrix is too large for the GPU kernels' "
                                   "int32 offsets; split it")
    return tuple(t if t is not None else quants for t in (quants, m.scales, m.mins, m.highs, m.sub_scales))
