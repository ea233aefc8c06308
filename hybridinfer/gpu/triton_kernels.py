"""Triton kernels for the GPU side, reading DeviceMatrix fields as stored (`weights.py`); same functions,
signatures and results as `reference.py`. Modelled on PowerInfer's / ProSparse's sparse GPU operators:

    matvec (T == 1)  GEMV: each program a tile of BLOCK_R rows, looping over the columns in tiles of BLOCK_C
                     (whole 32-element blocks, half a K-quant super-block), decoding the blocks in registers (each
                     element from its own block's fields: F32/F16/BF16, Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K),
                     accumulating in float32
    hot_ffn          S2: gate rows . x (only rows the mask allows), FATReLU, then up rows . x only for the rows that
                     fired (masked loads: the other rows' up bytes are never read) -> h (n_hot,); then
                     S3: out = sum_i h_i * down_t[i], each program a tile of output columns and a share of the rows,
                     loading only rows with h_i != 0; the shares' partial sums are added on the host side (no atomics,
                     so the result does not depend on scheduling)

Batches (matvec with T > 1, hidden_dense, down_t_product) dequantize in row chunks and use the BLAS / cuBLAS
matmul, as llama.cpp does for prompts: they are `reference`'s functions.

Under TRITON_INTERPRET=1 the kernels run on CPU tensors (the tests); compiled, on CUDA tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..model_file import weight_formats
from . import reference
from .reference import down_t_product, hidden_dense  # noqa: F401  (batched forms: see the module doc)
from .weights import GPU_FORMATS, DeviceMatrix

# the formats' kernel codes as Triton constexprs: compiled, a kernel may read only globals made with tl.constexpr (a
# plain int global passes under TRITON_INTERPRET=1 but fails to compile)
_BF16 = tl.constexpr(weight_formats.BF16.code)
_Q8_0 = tl.constexpr(weight_formats.Q8_0.code)
_Q4_0 = tl.constexpr(weight_formats.Q4_0.code)
_Q4_1 = tl.constexpr(weight_formats.Q4_1.code)
_Q5_0 = tl.constexpr(weight_formats.Q5_0.code)
_Q5_1 = tl.constexpr(weight_formats.Q5_1.code)
_Q4_K = tl.constexpr(weight_formats.Q4_K.code)
_Q5_K = tl.constexpr(weight_formats.Q5_K.code)
_Q6_K = tl.constexpr(weight_formats.Q6_K.code)

BLOCK_R = 16  # rows a program (GEMV, S2) or a loop step (S3) takes
BLOCK_C = 128  # columns a loop step (GEMV, S2) or a program (S3) takes: 4 whole 32-element blocks, half a K-quant's
S3_PROGRAMS = 1024  # about how many S3 programs to launch (column tiles x row shares) to fill the GPU


@triton.jit
def _weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT: tl.constexpr):
    """float32 tile W[r, c] (r (R, 1) int64 rows, c (1, C) columns, live (R, C) which to load; 0 elsewhere), reading
    the DeviceMatrix fields (`weights.py`) q_ptr = values (float formats) or quants, d_ptr = scales, m_ptr = mins,
    h_ptr = highs, s_ptr = sub_scales; FMT is the format's code (`weight_formats.py`)."""
    if FMT <= _BF16:  # the float formats
        w = tl.load(q_ptr + r * cols + c, mask=live, other=0).to(tl.float32)
    elif FMT == _Q4_K or FMT == _Q5_K or FMT == _Q6_K:
        w = _super_block_weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT)
    else:
        block = r * (cols // 32) + c // 32
        d = tl.load(d_ptr + block, mask=live, other=0).to(tl.float32)
        if FMT == _Q8_0:
            w = d * tl.load(q_ptr + r * cols + c, mask=live, other=0).to(tl.float32)
        else:
            byte = tl.load(q_ptr + r * (cols // 2) + (c // 32) * 16 + c % 16, mask=live, other=0).to(tl.int32)
            q = tl.where(c % 32 >= 16, byte >> 4, byte & 15)
            if FMT == _Q5_0 or FMT == _Q5_1:  # bit e of the block's qh word: element e's fifth bit
                q += ((tl.load(h_ptr + block, mask=live, other=0) >> (c % 32)) & 1) * 16
            if FMT == _Q4_0:
                w = d * (q - 8).to(tl.float32)
            elif FMT == _Q5_0:
                w = d * (q - 16).to(tl.float32)
            else:  # Q4_1, Q5_1
                w = d * q.to(tl.float32) + tl.load(m_ptr + block, mask=live, other=0).to(tl.float32)
    return w


@triton.jit
def _super_block_weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT: tl.constexpr):
    """`_weights` for the K-quants (Q4_K, Q5_K, Q6_K): 256-element super-blocks, element e = c % 256 of block
    `block`, as `weights.py`'s module doc lays them out."""
    block = r * (cols // 256) + c // 256
    e = c % 256
    d = tl.load(d_ptr + block, mask=live, other=0).to(tl.float32)
    if FMT == _Q6_K:
        h, i = e // 128, e % 128
        low = tl.load(q_ptr + block * 128 + h * 64 + i % 64, mask=live, other=0).to(tl.int32)
        top = tl.load(h_ptr + block * 64 + h * 32 + i % 32, mask=live, other=0).to(tl.int32)
        q = ((low >> (4 * (i // 64))) & 15) | (((top >> (2 * (i // 32))) & 3) << 4)
        sc = tl.load(s_ptr + block * 16 + e // 16, mask=live, other=0).to(tl.float32)
        w = (d * sc) * (q - 32).to(tl.float32)
    else:
        s = e // 32  # the sub-block: its 6-bit (sc, m) from bytes s % 4, s % 4 + 4 and s % 4 + 8 of the 12
        packed = s_ptr + block * 12 + s % 4
        b0 = tl.load(packed, mask=live, other=0).to(tl.int32)
        b1 = tl.load(packed + 4, mask=live, other=0).to(tl.int32)
        b2 = tl.load(packed + 8, mask=live, other=0).to(tl.int32)
        sc = tl.where(s < 4, b0 & 63, (b2 & 15) | ((b0 >> 2) & 48))
        mn = tl.where(s < 4, b1 & 63, (b2 >> 4) | ((b1 >> 2) & 48))
        byte = tl.load(q_ptr + block * 128 + (e // 64) * 32 + e % 32, mask=live, other=0).to(tl.int32)
        q = tl.where(s % 2 == 1, byte >> 4, byte & 15)
        if FMT == _Q5_K:  # bit s of qh byte e % 32
            q += ((tl.load(h_ptr + block * 32 + e % 32, mask=live, other=0).to(tl.int32) >> s) & 1) * 16
        dmin = tl.load(m_ptr + block, mask=live, other=0).to(tl.float32)
        w = (d * sc.to(tl.float32)) * q.to(tl.float32) - dmin * mn.to(tl.float32)
    return w


@triton.jit
def _row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, r, live, cols, FMT: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_C: tl.constexpr):
    """(BLOCK_R,) float32: W[r] . x for the rows r (BLOCK_R,) int64 where live, 0 elsewhere (their bytes unread)."""
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        in_row = c < cols
        x = tl.load(x_ptr + c, mask=in_row, other=0).to(tl.float32)
        w = _weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r[:, None], c[None, :], live[:, None] & in_row[None, :], cols,
                     FMT)
        acc += w * x[None, :]
    return tl.sum(acc, axis=1)


@triton.jit
def _gemv_kernel(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, out_ptr, rows, cols, FMT: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out (rows,) = W (rows, cols) @ x (cols,); program p takes rows [p*BLOCK_R, (p+1)*BLOCK_R)."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    in_matrix = r < rows
    out = _row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, r, in_matrix, cols, FMT, BLOCK_R, BLOCK_C)
    tl.store(out_ptr + r, out, mask=in_matrix)


@triton.jit
def _s2_kernel(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, mask_ptr,
               out_ptr, count_ptr, n, cols, threshold, HAS_MASK: tl.constexpr, GATE_FMT: tl.constexpr,
               UP_FMT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """out (n,) = h = a * (up . x) with a = FATReLU(gate . x) where the mask (n,) uint8 allows, else 0; count_ptr[p] =
    how many of program p's rows fired (a != 0)."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    candidate = r < n
    if HAS_MASK:
        candidate = candidate & (tl.load(mask_ptr + r, mask=candidate, other=0) != 0)
    g = _row_dots(gq_ptr, gd_ptr, gm_ptr, gh_ptr, gs_ptr, x_ptr, r, candidate, cols, GATE_FMT, BLOCK_R, BLOCK_C)
    fired = candidate & (g >= threshold) & (g != 0.0)
    u = _row_dots(uq_ptr, ud_ptr, um_ptr, uh_ptr, us_ptr, x_ptr, r, fired, cols, UP_FMT, BLOCK_R, BLOCK_C)
    tl.store(out_ptr + r, tl.where(fired, g, 0.0) * u, mask=r < n)  # NaN if an unfired row's up bytes were read
    tl.store(count_ptr + tl.program_id(0), tl.sum(fired.to(tl.int32), axis=0))


@triton.jit
def _s3_kernel(q_ptr, d_ptr, m_ptr, hi_ptr, s_ptr, h_ptr, partial_ptr, n, cols, rows_per_share, FMT: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """partial (shares, cols): partial[s, c] = sum over the rows i of share s (program axis 1) of h_i * W[i, c], for
    the columns c of program axis 0's tile; rows with h_i == 0 are not loaded."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_row = c < cols
    first = tl.program_id(1).to(tl.int64) * rows_per_share
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows_per_share, BLOCK_R):
        r = first + r0 + tl.arange(0, BLOCK_R)
        h = tl.load(h_ptr + r, mask=r < n, other=0)
        w = _weights(q_ptr, d_ptr, m_ptr, hi_ptr, s_ptr, r[:, None], c[None, :], (h != 0.0)[:, None] & in_row[None, :],
                     cols, FMT)
        acc += h[:, None] * w
    tl.store(partial_ptr + tl.program_id(1) * cols + c, tl.sum(acc, axis=0), mask=in_row)


def matvec(m: DeviceMatrix, x: torch.Tensor) -> torch.Tensor:
    """x (T, cols) float32 -> (T, rows) float32 = x @ W.T: the GEMV kernel for T == 1, reference.matvec else."""
    if x.shape[0] != 1:
        return reference.matvec(m, x)
    x = x.to(torch.float32).contiguous()
    out = torch.zeros((1, m.rows), dtype=torch.float32, device=x.device)
    if m.rows:
        _gemv_kernel[(triton.cdiv(m.rows, BLOCK_R),)](*_fields(m), x, out, m.rows, m.cols,
                                                      FMT=GPU_FORMATS[m.qtype].code, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return out


def hot_ffn(gate: DeviceMatrix, up: DeviceMatrix, down_t: DeviceMatrix, x: torch.Tensor, mask: torch.Tensor | None,
            threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x (n_embd,) float32, mask (n_hot,) bool or None (all candidates) -> (out (n_embd,) float32,
    fired: 0-dim int64, the number of neurons with a != 0). The S2 kernel, then the S3 kernel."""
    n, cols = gate.rows, down_t.cols
    x = x.to(torch.float32).contiguous()
    if n == 0:
        return torch.zeros(cols, dtype=torch.float32, device=x.device), torch.zeros((), dtype=torch.int64,
                                                                                    device=x.device)
    programs = triton.cdiv(n, BLOCK_R)
    h = torch.empty(n, dtype=torch.float32, device=x.device)
    counts = torch.empty(programs, dtype=torch.int32, device=x.device)
    mask_bytes = h if mask is None else mask.contiguous().view(torch.uint8)
    _s2_kernel[(programs,)](*_fields(gate), *_fields(up), x, mask_bytes, h, counts, n, gate.cols, float(threshold),
                            HAS_MASK=mask is not None, GATE_FMT=GPU_FORMATS[gate.qtype].code,
                            UP_FMT=GPU_FORMATS[up.qtype].code, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    column_tiles = triton.cdiv(cols, BLOCK_C)
    shares = max(1, min(programs, S3_PROGRAMS // column_tiles))
    rows_per_share = triton.cdiv(programs, shares) * BLOCK_R  # whole BLOCK_R steps
    shares = triton.cdiv(n, rows_per_share)
    partial = torch.empty((shares, cols), dtype=torch.float32, device=x.device)
    _s3_kernel[(column_tiles, shares)](*_fields(down_t), h, partial, n, cols, rows_per_share,
                                      FMT=GPU_FORMATS[down_t.qtype].code, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return partial.sum(dim=0), counts.sum(dtype=torch.int64)


def _fields(m: DeviceMatrix) -> tuple[torch.Tensor, ...]:
    """(q, d, m, h, s) pointers of `_weights`; a field a format lacks is filled with a tensor the kernel never reads."""
    if m.values is not None:
        return (m.values,) * 5
    return tuple(t if t is not None else m.quants for t in (m.quants, m.scales, m.mins, m.highs, m.sub_scales))
