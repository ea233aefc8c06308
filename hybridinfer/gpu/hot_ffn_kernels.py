"""PowerInfer's sparse FFN over the hot neurons as two Triton launches (twin: `reference.hot_ffn`):

    hot_ffn          S2 (`_s2_kernel`): each program compacts its chunk's candidate rows (the mask) into a list, then
                     takes them BLOCK_R at a time: gate rows . x, FATReLU, then up rows . x only for the rows that
                     fired (the others masked, or in the word formats pointed at a fired row: their up bytes are never
                     read) -> h (n_hot,); then
                     S3 (`s3_kernels.py`): out = sum_i h_i * down_t[i], each program a tile of output columns and a
                     share of the rows, which it compacts to the rows with h_i != 0 before loading any weight; the
                     tile's last program adds the shares (`kernel_common._finish`)

hot_ffn reads its settings as this module's names (the S2/S3 ones below; BLOCK_R, BLOCK_C, NUM_WARPS and
TARGET_PROGRAMS imported by name from `kernel_common.py`): a test that changes one for hot_ffn patches it here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_common import (_ADD, _STORE, BLOCK_C, BLOCK_R, LAUNCH, NUM_WARPS, TARGET_PROGRAMS, _counters, _fields,
                            _x_sums_scratch, low_bits)
from .s3_kernels import _s3_kernel, _s3_words_kernel
from .tile_decoders import _Q4_1, _Q5_1, _block_x_sums, _row_dots
from .weights import GPU_FORMATS, WORD_FORMATS, DeviceMatrix

CHUNK = 128  # rows an S2 program compacts; rows an S3 program compacts at a time
S3_ROWS = 8  # compacted rows an S3 step takes in the word formats: one a warp
S3_COLUMNS = 2048  # columns an S3 program takes in the word formats (Q4: 2 units a thread, Q8_0: 4)
S3_WARPS = 8
S3_MAX_SHARES = 64  # row shares of an S3 launch in the word formats: each writes a (cols,) float32 partial sum


@triton.jit
def _s2_kernel(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, sums_ptr,
               mask_ptr, index_ptr, list_ptr, out_ptr, fired_ptr, n, cols, threshold, gate_bits, up_bits,
               HAS_MASK: tl.constexpr, HAS_INDEX: tl.constexpr, GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """out (n,) = h = a * (up . x) with a = FATReLU(gate . x) where the mask allows, else 0: row i's mask byte is
    mask_ptr[i] (uint8), or with HAS_INDEX mask_ptr[index_ptr[i]] (the mask over every neuron, index_ptr the hot
    neurons' int64 indices); *fired_ptr (int64) += how many rows fired (a != 0), one atomic add a program. Program p
    compacts the candidates of rows [p*CHUNK, (p+1)*CHUNK) into list_ptr[p*CHUNK:] (int32 scratch) and takes them
    BLOCK_R at a time. sums_ptr (programs, cols / 32): Q4_1's/Q5_1's scratch for the sums of x per block."""
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
    if GATE_FMT == _Q4_1 or UP_FMT == _Q4_1 or GATE_FMT == _Q5_1 or UP_FMT == _Q5_1:
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


def s3_columns(qtype) -> int:
    """Columns an S3 program takes for a down_t matrix of `qtype`."""
    return S3_COLUMNS if qtype in WORD_FORMATS else BLOCK_C


def s3_units(qtype) -> int:
    """4-word units an S3 program takes for a down_t matrix of a word format."""
    return S3_COLUMNS // 32 * (WORD_FORMATS[qtype] // 4)


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
        _s3_words_kernel[(column_tiles, shares)](*_fields(down_t)[:4], h, slots, partial, counters, out, n, cols,
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
