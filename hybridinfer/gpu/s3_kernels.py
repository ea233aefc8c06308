"""S3 of the sparse FFN as Triton kernels (`hot_ffn_kernels.hot_ffn` launches them): out = epilogue(sum_i h_i *
down_t[i]) over the rows i with h_i != 0, program (t, s) a tile t of output columns and a share s of the rows.

    _s3_kernel        F32/F16/BF16 and the K-quants: a tile of BLOCK_C columns, BLOCK_R compacted rows a step
    _s3_words_kernel  the word formats, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 (int32 words): a tile of S3_UNITS 4-word units,
                      S3_ROWS compacted rows a step
                      (`_s3_word_rows`), one accumulator per field of a word, written out by `_s3_put`

Each program compacts its rows CHUNK at a time to those with h_i != 0 (`_compact_live_rows`) before loading any
weight; several shares are added by the tile's last program (`kernel_common._finish`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .kernel_common import _STORE, _epilogue, _finish, _last_share, _shares_sum
from .tile_decoders import _Q4_1, _Q5_0, _Q5_1, _Q8_0, _field, _five_bit_words, _tile_load, _weights


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
    other than the word formats: program (t, s) takes the columns of tile t and the rows of share s; rows with h_i == 0
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
def _s3_word_rows(q_ptr, d_ptr, m_ptr, hi_ptr, h_ptr, slots, j, count, n_units, u, low_bits, a0, a1, a2, a3, a4, a5,
                  a6, a7, a_m, FMT: tl.constexpr, TAIL: tl.constexpr):
    """Add h_i * W[i, units u] of the rows i = slots[j] (S3_ROWS slots) to the accumulators: a0..a7 (S3_ROWS,
    S3_UNITS, 4) one per field of a unit's words (Q8_0: a0..a3), a_m (S3_ROWS, S3_UNITS) h_i m_i (Q4_1, Q5_1); Q5's
    qh words at hi_ptr. TAIL: slots j at or past count give 0 (their words unread). u: units within the row (a
    caller clamps them)."""
    U: tl.constexpr = 2 if FMT == _Q8_0 else 1  # 4-word units per block
    i = tl.arange(0, 4)
    r = _tile_load(slots + j, j < count, TAIL)
    h = _tile_load(h_ptr + r, j < count, TAIL)
    words_at = q_ptr + r[:, None, None] * (n_units * 4) + u[None, :, None] * 4 + i[None, None, :]
    block = r[:, None] * (n_units // U) + (u // U)[None, :]
    live = (j < count)[:, None] & (u >= 0)[None, :]
    words = _tile_load(words_at, live[:, :, None], TAIL)
    d = _tile_load(d_ptr + block, live, TAIL)
    high_words = words
    if FMT == _Q5_0 or FMT == _Q5_1:
        words, high_words = _five_bit_words(words, _tile_load(hi_ptr + block, live, TAIL)[:, :, None])
    hd = (h[:, None] * d.to(tl.float32))[:, :, None]
    a0 += hd * _field(words, high_words, 0, FMT, low_bits)
    a1 += hd * _field(words, high_words, 1, FMT, low_bits)
    a2 += hd * _field(words, high_words, 2, FMT, low_bits)
    a3 += hd * _field(words, high_words, 3, FMT, low_bits)
    if U == 1:
        a4 += hd * _field(words, high_words, 4, FMT, low_bits)
        a5 += hd * _field(words, high_words, 5, FMT, low_bits)
        a6 += hd * _field(words, high_words, 6, FMT, low_bits)
        a7 += hd * _field(words, high_words, 7, FMT, low_bits)
    if FMT == _Q4_1 or FMT == _Q5_1:
        a_m += h[:, None] * _tile_load(m_ptr + block, live, TAIL).to(tl.float32)
    return a0, a1, a2, a3, a4, a5, a6, a7, a_m


@triton.jit
def _s3_words_kernel(q_ptr, d_ptr, m_ptr, hi_ptr, h_ptr, slots_ptr, partial_ptr, counter_ptr, out_ptr, n, cols,
                     rows_per_share, low_bits, scale, FMT: tl.constexpr, EPILOGUE: tl.constexpr, SPLIT: tl.constexpr,
                     S3_ROWS: tl.constexpr, S3_UNITS: tl.constexpr, CHUNK: tl.constexpr):
    """`_s3_kernel` for the word formats (q_ptr: int32 words): a program's tile is S3_UNITS 4-word units of columns
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
                q_ptr, d_ptr, m_ptr, hi_ptr, h_ptr, slots, j0 + tl.arange(0, S3_ROWS), count, n_units, u_read,
                low_bits, a0, a1, a2, a3, a4, a5, a6, a7, a_m, FMT, False)
        if whole < count:
            a0, a1, a2, a3, a4, a5, a6, a7, a_m = _s3_word_rows(
                q_ptr, d_ptr, m_ptr, hi_ptr, h_ptr, slots, whole + tl.arange(0, S3_ROWS), count, n_units, u_read,
                low_bits, a0, a1, a2, a3, a4, a5, a6, a7, a_m, FMT, True)
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
