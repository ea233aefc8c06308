"""What the GEMV family (`gemv_kernels.py`) and the sparse FFN (`hot_ffn_kernels.py`, `s3_kernels.py`) share:

    BLOCK_R, BLOCK_C, NUM_WARPS, LAUNCH   the launches' tile sizes and compile options; the other modules import
                                          them by name, so a test that changes one patches it in the module whose
                                          function reads it (split_k's MIN_SPLIT_STEPS and TARGET_PROGRAMS: here)
    split_k, _finish                      split-K in one pass: columns per share; a share's partial sums stored, the
                                          tile's last program (`_last_share`: one atomic ticket a program) adding
                                          them in a fixed order (`_shares_sum`: the result does not depend on
                                          scheduling) and applying the epilogue
    _epilogue, _activation                what a GEMV or S3 does with its result; the FFN's activations
    _inverse_rms                          RMSNorm's scale, computed by each program that needs it
    tile_columns, low_bits, _counters,    the launches' arguments: columns a loop step takes, the decoders' low_bits,
    _x_sums_scratch, _fields              split-K's counters, Q4_1's/Q5_1's scratch, a DeviceMatrix's fields as pointers
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import HybridInferError
from ..model_file import weight_formats
from .tile_decoders import WORD_UNITS
from .weights import WORD_FORMATS, DeviceMatrix

# what a GEMV or S3 does with its result (`_epilogue`), and the dense FFN's activations (`_activation`)
_STORE, _RELU, _AT_LEAST, _ADD = (tl.constexpr(k) for k in range(4))
_FATRELU, _SILU, _GELU = (tl.constexpr(k) for k in range(3))
ACTIVATIONS = {"relu": 0, "fatrelu": 0, "silu": 1, "gelu": 2}
NORM_BLOCK = tl.constexpr(128)  # elements a program squares at a time for an RMSNorm prologue (`_inverse_rms`)

BLOCK_R = 32  # rows a GEMV program, an S2 step or an S3 step takes
BLOCK_C = 64  # columns a loop step takes in the other formats (GEMV, S2), and an S3 program's tile in them
NUM_WARPS = 2  # GEMV, S2, and S3 in the other formats: a thread takes 4 rows of a 32-row tile
MIN_SPLIT_STEPS = 2  # the fewest column steps a split-K share takes
TARGET_PROGRAMS = 1024  # about how many programs a GEMV or S3 launch should have to fill the GPU
# every launch's compile options: no software pipelining (it would stage loads through shared memory), and mul + add
# fused into FFMA as Triton 3.9 does by default (its default turns to unfused in 3.10)
LAUNCH = {"num_stages": 1, "enable_fp_fusion": True}


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


def tile_columns(qtype) -> int:
    """Columns a GEMV/S2 loop step takes for a matrix of `qtype`."""
    if qtype in WORD_FORMATS:
        return int(WORD_UNITS) * 32 // (WORD_FORMATS[qtype] // 4)
    if weight_formats.FORMATS[qtype].k_quant:  # a super-block (`_q4_k_row_dots`, `_q6_k_row_dots`)
        return 256
    return BLOCK_C


def split_k(rows: int, cols: int, qtype, *qtypes) -> int:
    """Columns per share of a GEMV: all of them, or (narrow matrices) a whole number of loop steps, at least
    MIN_SPLIT_STEPS, so that about TARGET_PROGRAMS programs run. Several matrices read together (`qtypes`): steps
    of the widest tile."""
    step = max(tile_columns(q) for q in (qtype, *qtypes))
    steps = triton.cdiv(cols, step)
    shares = max(1, min(triton.cdiv(TARGET_PROGRAMS, triton.cdiv(rows, BLOCK_R)), steps // MIN_SPLIT_STEPS))
    return triton.cdiv(steps, shares) * step


def low_bits(qtype) -> int:
    """The kernels' run-time low_bits argument for a matrix of `qtype` (`_nibble`, `_byte`, `_byte_dots`)."""
    five = {f.type: 31 for f in (weight_formats.Q5_0, weight_formats.Q5_1, weight_formats.Q5_K)}
    return {weight_formats.Q8_0.type: 255, **five, weight_formats.Q6_K.type: 63}.get(qtype, 15)


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(tiles: int, device: torch.device) -> torch.Tensor:
    """int32 (tiles,) zeros for `_last_share`, kept per device (each launch leaves them 0): allocated (one fill) only
    when a launch needs more than any before."""
    held = _COUNTERS.get(device)
    if held is None or held.numel() < tiles:
        held = _COUNTERS[device] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
    return held


def _x_sums_scratch(programs: int, cols: int, x: torch.Tensor, *qtypes, staged: bool = False) -> torch.Tensor:
    """float32 scratch for Q4_1's or Q5_1's sums of x per block, (programs, cols / 32), after (programs, cols) for x
    times the norm weight where `staged` (`_block_sums_prologue`); x itself (never read) where no matrix is Q4_1 or
    Q5_1."""
    if weight_formats.Q4_1.type not in qtypes and weight_formats.Q5_1.type not in qtypes:
        return x
    return torch.empty(programs * (cols // 32 + (cols if staged else 0)), dtype=torch.float32, device=x.device)


def _fields(m: DeviceMatrix) -> tuple[torch.Tensor, ...]:
    """(q, d, m, h, s) pointers of the kernels (q: int32 words for the word formats); a field a format lacks is filled
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
