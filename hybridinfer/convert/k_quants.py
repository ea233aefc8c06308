"""llama.cpp's reference K-quant encoders (Q4_K, Q5_K, Q6_K) in numpy, byte for byte.

A port of ggml-quants.c's `quantize_row_q{4,5,6}_K_ref` with its helpers `make_qkx2_quants`, `make_qx_quants`
and `nearest_int`, which is what `llama-quantize` runs when no importance matrix is given. Every value is a
float32 computed in llama.cpp's order: numpy works across all blocks at once, and each sum over a block's
elements is accumulated one element at a time (never numpy's pairwise sum), since float addition does not
associate. llama.cpp builds these functions without FMA contraction (ggml-base has no -march flags), so
products and sums are rounded one at a time here as there.

A super-block holds QK_K = 256 values:

    Q4_K  d | dmin | 12 bytes: 8 six-bit scales and mins | 128 bytes of nibbles     value = d*sc*q - dmin*m
    Q5_K  the same, then 32 bytes qh (the fifth bits) before the nibbles               (q of 5 bits)
    Q6_K  128 bytes ql (low nibbles) | 64 bytes qh (2 high bits) | 16 int8 scales | d  value = d*sc*(q - 32)

Q4_K/Q5_K: 8 sub-blocks of 32 with an affine fit each; Q6_K: 16 sub-blocks of 16 with a symmetric fit each.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

QK_K = 256
BLOCKS_PER_PASS = 128  # super-blocks encoded together: temporaries of (32, 1024) floats stay in the CPU's cache
F32 = np.float32
MAGIC = F32(12582912.0)  # 1.5 * 2**23: adding it leaves round-half-even(x) in the low mantissa bits
GROUP_MAX_EPS = F32(1e-15)


def nearest_int(values: np.ndarray) -> np.ndarray:
    """llama.cpp's `nearest_int` (int32): round half to even through the float32 mantissa."""
    bits = (np.asarray(values, dtype=F32) + MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def ordered_sum(terms: np.ndarray, from_zero: bool = True) -> np.ndarray:
    """Sum over axis 0 one term at a time, as a C loop `s += t[i]` does (terms: (n, m) float32): from 0, or
    from the first term (`s = t[0]`, which keeps a first -0.0)."""
    total = terms[0] + F32(0) if from_zero else terms[0].copy()
    for term in terms[1:]:
        total += term
    return total


def to_f16_and_back(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float16 stored, the float32 it reads back as): GGML_FP32_TO_FP16 then GGML_FP16_TO_FP32."""
    half = np.asarray(values, dtype=F32).astype(np.float16)
    return half, half.astype(F32)


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """The weighted affine fit of each column of x (n, m): levels L (n, m) in [0, nmax], scale (m,) and the
    subtracted minimum (m,), searching nstep + 1 candidate scales as llama.cpp does."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        low, high = x.min(axis=0), x.max(axis=0)
        sum_w = ordered_sum(weights, from_zero=False)
        sum_x = ordered_sum(weights * x, from_zero=False)
        low = np.where(low > 0, F32(0), low).astype(F32)
        flat = high == low
        iscale = F32(nmax) / np.where(flat, F32(1), high - low)
        scale = F32(1) / iscale
        levels = np.clip(nearest_int(iscale * (x - low)), 0, nmax).astype(F32)
        diff = scale * levels + low - x
        best_error = ordered_sum(weights * (diff * diff))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(flat, F32(1), high - low)
            trial = np.clip(nearest_int(iscale * (x - low)), 0, nmax).astype(F32)
            wl = weights * trial
            sum_l, sum_l2, sum_xl = ordered_sum(wl), ordered_sum(wl * trial), ordered_sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0), this_min).astype(F32)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale).astype(F32)
            diff = this_scale * trial + this_min - x
            error = ordered_sum(weights * (diff * diff))
            better = (det > 0) & (error < best_error) & ~flat  # the minimum found so far moves the next grid
            levels = np.where(better, trial, levels)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale).astype(F32)
            low = np.where(better, this_min, low).astype(F32)
    levels = np.where(flat, F32(0), levels)
    scale = np.where(flat, F32(0), scale).astype(F32)
    return levels.astype(np.uint8), scale, (-low).astype(F32)


def make_qx_quants(x: np.ndarray, nmax: int):
    """The symmetric fit of each column of x (n, m) weighted by x*x (llama.cpp's rmse_type 1): levels
    (n, m) in [0, 2*nmax) (offset by nmax) and scale (m,), trying 19 scales around -nmax / max."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        columns = np.arange(x.shape[1])
        peak = x[np.abs(x).argmax(axis=0), columns]  # the first element of largest magnitude
        zero = np.abs(peak) < GROUP_MAX_EPS
        peak = np.where(zero, F32(1), peak).astype(F32)
        weights = x * x

        def fit(iscale):
            level = np.clip(nearest_int(iscale * x), -nmax, nmax - 1).astype(F32)
            wl = weights * level
            return level, ordered_sum(weights * x * level), ordered_sum(wl * level)

        levels, sumlx, suml2 = fit(F32(-nmax) / peak)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            trial, sumlx, suml2 = fit(-(F32(nmax) + F32(0.1) * F32(step)) / peak)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            levels = np.where(better, trial, levels)
            scale = np.where(better, sumlx / suml2, scale).astype(F32)
            best = np.where(better, scale * sumlx, best).astype(F32)
    levels = np.where(zero, F32(0), levels + F32(nmax))
    return levels.astype(np.uint8), np.where(zero, F32(0), scale).astype(F32)


def _affine_superblocks(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Q4_K/Q5_K's common part for x (nb, 256): (d f16 (nb,), dmin f16 (nb,), 12 scale bytes (nb, 12),
    levels (nb, 256) in [0, nmax])."""
    nb = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # (32, nb*8): element i of every sub-block in a row
    av_x = np.sqrt(ordered_sum(sub * sub) / F32(32))
    weights = av_x + np.abs(sub)
    levels, scales, mins = make_qkx2_quants(sub, weights, nmax, rmin, rdelta, nstep)
    levels = levels.T.reshape(nb, 8, 32)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(F32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(F32)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t, then MIN
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    packed = np.empty((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d16, d = to_f16_and_back(max_scale / F32(63))
    dmin16, dmin = to_f16_and_back(max_min / F32(63))
    sub_d = (d[:, None] * ls.astype(F32))[:, :, None]  # (nb, 8, 1)
    sub_m = (dmin[:, None] * lm.astype(F32))[:, :, None]
    x = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        final = np.clip(nearest_int((x + sub_m) / np.where(sub_d == 0, F32(1), sub_d)), 0, nmax)
    levels = np.where(sub_d != 0, final, levels).astype(np.uint8).reshape(nb, QK_K)
    return d16, dmin16, packed, levels


def _halves(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levels (nb, 256) as 4 chunks of 64: (first 32 of each chunk, last 32), each (nb, 4, 32)."""
    chunks = levels.reshape(-1, 4, 2, 32)
    return chunks[:, :, 0], chunks[:, :, 1]


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """x (nb, 256) float32 -> (nb, 144) Q4_K blocks."""
    d16, dmin16, scales, levels = _affine_superblocks(x, 15, -1.0, 0.1, 20)
    low, high = _halves(levels)
    qs = (low | (high << 4)).reshape(-1, 128)
    return np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2), scales, qs],
                          axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """x (nb, 256) float32 -> (nb, 176) Q5_K blocks."""
    d16, dmin16, scales, levels = _affine_superblocks(x, 31, -0.5, 0.1, 15)
    low, high = _halves(levels)
    qs = ((low & 0xF) | ((high & 0xF) << 4)).reshape(-1, 128)
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, :, None]  # chunk c's fifth bits: bits 2c and 2c + 1 of qh
    qh = np.bitwise_or.reduce(((low >> 4) << shifts) | ((high >> 4) << (shifts + 1)), axis=1)  # (nb, 32)
    return np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2), scales,
                           qh.astype(np.uint8), qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """x (nb, 256) float32 -> (nb, 210) Q6_K blocks."""
    nb = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, nb*16)
    levels, scales = make_qx_quants(sub, 32)
    levels, scales = levels.T.reshape(nb, 16, 16), scales.reshape(nb, 16)
    first = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), first]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-128) / np.where(empty, F32(1), max_scale)
        d16, d = to_f16_and_back(F32(1) / iscale)
        sub_scale = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        sub_d = (d[:, None] * sub_scale.astype(F32))[:, :, None]  # (nb, 16, 1)
        final = np.clip(nearest_int(x.reshape(nb, 16, 16) / np.where(sub_d == 0, F32(1), sub_d)), -32, 31) + 32
    levels = np.where(sub_d != 0, final, levels).astype(np.uint8).reshape(nb, 2, 4, 32)  # (nb, half, quarter, 32)
    ql = np.concatenate([(levels[:, :, 0] & 0xF) | ((levels[:, :, 2] & 0xF) << 4),
                         (levels[:, :, 1] & 0xF) | ((levels[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((levels[:, :, 0] >> 4) | ((levels[:, :, 1] >> 4) << 2) | ((levels[:, :, 2] >> 4) << 4)
          | ((levels[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    blocks = np.concatenate([ql, qh, sub_scale.view(np.uint8), d16.view(np.uint8).reshape(-1, 2)], axis=1)
    blocks[empty] = 0
    return blocks


QUANTIZERS = {T.Q4_K: quantize_q4_k, T.Q5_K: quantize_q5_k, T.Q6_K: quantize_q6_k}


def quantize(values: np.ndarray, qtype: T) -> np.ndarray:
    """values (..., n) float32 with n a multiple of 256 -> (..., n / 256 * block bytes) uint8, as
    `gguf.quants.quantize` shapes its output."""
    values = np.asarray(values, dtype=F32)
    if values.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} needs rows of whole {QK_K}-blocks, got {values.shape[-1]} values")
    superblocks = values.reshape(-1, QK_K)
    blocks = np.empty((superblocks.shape[0], GGML_QUANT_SIZES[qtype][1]), dtype=np.uint8)
    for begin in range(0, superblocks.shape[0], BLOCKS_PER_PASS):
        blocks[begin:begin + BLOCKS_PER_PASS] = QUANTIZERS[qtype](superblocks[begin:begin + BLOCKS_PER_PASS])
    return blocks.reshape(*values.shape[:-1], values.shape[-1] // QK_K * blocks.shape[1])
