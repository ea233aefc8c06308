"""The dense GEMV family as Triton kernels, one launch a call for T == 1 (twins in `reference.py`, which also
serve batches):

    matvec (T == 1)  GEMV: program (i, k) takes a tile of BLOCK_R rows and the k-th share of the columns (split-K:
                     narrow matrices get enough programs to fill the GPU), looping over the columns a tile at a time;
                     each share stores its partial sums and takes an atomic ticket per tile, and the tile's last
                     share adds them in a fixed order (`_finish`: the result does not depend on scheduling)
    norm_matvec      the GEMV of RMSNorm(x) (and gate_up's `norm`): each program computes the inverse RMS of the
                     whole x, multiplies x tiles by the norm weight as it loads them (Q4_1, Q5_1: staged in its scratch,
                     `_block_sums_prologue`) and scales its dot; one launch for a norm and the projection that reads it
    matvec_relu, matvec_at_least, add_matvec
                     the GEMV with another epilogue (`_epilogue`): ReLU, the threshold as a byte mask (which can also
                     copy a vector, RMS-normed or not, beside its work: a split FFN's input), the residual add
    gate_up          the dense FFN's first half, act(gate . x) * (up . x), both matrices in one kernel (`_activation`)

How a tile is decoded depends on the format (`tile_decoders.py`); the split-K sum, epilogues and activations are
`kernel_common.py`'s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .kernel_common import (_ADD, _AT_LEAST, _RELU, _STORE, ACTIVATIONS, BLOCK_C, BLOCK_R, LAUNCH, NUM_WARPS,
                            _activation, _counters, _fields, _finish, _inverse_rms, _last_share, _shares_sum,
                            _x_sums_scratch, low_bits, split_k)
from .tile_decoders import _Q4_1, _Q5_1, _block_sums_prologue, _row_dots
from .weights import GPU_FORMATS, DeviceMatrix

COPY_BLOCK = tl.constexpr(128)  # elements a GEMV program copies at a time beside its work (`_gemv_kernel`'s COPY)


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
    MIN: tl.constexpr = FMT == _Q4_1 or FMT == _Q5_1
    if MIN:  # the norm weight staged with the sums of x (`_block_sums_prologue`), else applied in the loop
        x_read, x_sums = _block_sums_prologue(x_ptr, norm_ptr, sums_ptr, c_first, c_last, cols_per_split, NORM)
    LOOP_NORM: tl.constexpr = NORM and not MIN
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
    MIN: tl.constexpr = GATE_FMT == _Q4_1 or UP_FMT == _Q4_1 or GATE_FMT == _Q5_1 or UP_FMT == _Q5_1
    if MIN:
        x_read, x_sums = _block_sums_prologue(x_ptr, norm_ptr, sums_ptr, c_first, c_last, cols_per_split, NORM)
    LOOP_NORM: tl.constexpr = NORM and not MIN
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
