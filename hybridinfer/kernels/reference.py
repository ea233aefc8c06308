"""Plain numpy twins of the CPU kernels (`cpu_quant.py`, `cpu_layer.py`'s blocks, over packed GGUF weights):
what each kernel must compute."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

from ..model_file.weight_formats import FORMATS


def fatrelu(values: np.ndarray, threshold: float) -> np.ndarray:
    """v if v >= threshold else 0 (threshold 0 is ReLU)."""
    return np.where(values >= threshold, values, np.float32(0)).astype(np.float32)


def cats(values: np.ndarray, threshold: float) -> np.ndarray:
    """CATS: silu(v) where |silu(v)| >= threshold, else 0."""
    values = np.asarray(values, dtype=np.float64)
    activation = values / (1 + np.exp(-values))
    return np.where(np.abs(activation) >= threshold, activation, 0).astype(np.float32)


def sparse_ffn(gate: np.ndarray, up: np.ndarray, down_t: np.ndarray, x: np.ndarray, rows: np.ndarray,
               threshold: float, activation=fatrelu) -> np.ndarray:
    """The FFN of one token over the neurons `rows` only: sum over i in rows of
    act(gate_i . x) * (up_i . x) * down_t[i], act = FATReLU (or `cats`) at `threshold`."""
    hidden = activation(gate[rows] @ x, threshold) * (up[rows] @ x)
    return hidden @ down_t[rows]


def select_inputs(values: np.ndarray, threshold: float, scales: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """TEAL: the indices of the entries with |v| >= threshold (WINA: |v| * scales >= threshold, scales the norms of
    the weight columns), and those entries."""
    rows = np.flatnonzero(np.abs(values) * (1 if scales is None else scales) >= threshold)
    return rows, values[rows]


def teal_matvec(weight: np.ndarray, x: np.ndarray, threshold: float) -> np.ndarray:
    """W (out, in) @ x with the entries of x below threshold in magnitude zeroed (TEAL's column-sparse product)."""
    return weight @ np.where(np.abs(x) >= threshold, x, np.float32(0))


# ---- weights of any GGUF format, decoded by the gguf package ------------------------------------------------

def dequantized(raw: np.ndarray, qtype, shape: tuple[int, int]) -> np.ndarray:
    """float32 (rows, cols) values of a GGUF weight as stored (`raw` as gguf stores it), via gguf.quants."""
    if T(qtype) == T.F32:
        return np.asarray(raw, dtype=np.float32).reshape(shape)
    return np.asarray(quants.dequantize(np.asarray(raw), T(qtype)), dtype=np.float32).reshape(shape)


def matvec(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """weight (n, d), x (d,) -> (n,), accumulated in float64."""
    return (weight.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)


def matvec_rows(weight: np.ndarray, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """-> (k,): weight[rows] @ x."""
    return matvec(weight[rows], x)


def accumulate_rows(weight_t: np.ndarray, rows: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """weight_t (n, d) -> (d,) = sum_k coeffs[k] * weight_t[rows[k]]."""
    return (coeffs.astype(np.float64) @ weight_t[rows].astype(np.float64)).astype(np.float32)


def accumulate_rows_int8(raw: np.ndarray, qtype, shape: tuple[int, int], rows: np.ndarray, coeffs: np.ndarray,
                         batch: int | None = None) -> np.ndarray:
    """What `cpu_accumulate_int8` computes for a Q8_0/Q4_x/Q5_x weight_t (`raw` as gguf stores it, `shape` (n, d)):
    sum_k coeffs[k] * weight_t[rows[k]] with, per batch of `batch` active rows (coeffs != 0, in order) and per
    block b, s_ib = c_i * d_ib quantized to int8 with the scale S_b = max_i |s_ib| / 127 (float32 as the kernel),
    then S_b * sum_i k_ib * qv_ib with qv = q - 8 for Q4_x, q - 16 for Q5_x (+ sum_i c_i * (m_ib + 8 d_ib) for Q4_1,
    m_ib + 16 d_ib for Q5_1) accumulated
    in float64. `batch`: the kernel's INT8_BATCH unless given."""
    from .cpu_accumulate_int8 import INT8_BATCH

    batch = batch or INT8_BATCH
    qtype = T(qtype)
    fmt = FORMATS[qtype]
    n, cols = shape
    blocks = np.asarray(raw).view(np.uint8).reshape(n, cols // 32, fmt.block_bytes)

    def f16_field(name: str) -> np.ndarray:  # (n, nb) float32
        at = fmt.field_at(name)
        return blocks[:, :, at:at + 2].copy().view(np.float16)[:, :, 0].astype(np.float32)

    d = f16_field("scale")
    m = f16_field("minimum") if fmt.has_minimum else None
    quants = blocks[:, :, fmt.header_bytes:]
    centre = 2 ** (fmt.bits - 1)
    if qtype == T.Q8_0:
        qv = quants.view(np.int8).astype(np.int64)
    else:
        qv = np.concatenate([quants & 15, quants >> 4], axis=2).astype(np.int64) - centre
    if fmt.high_bits:  # qh, the word before the nibbles: bit e is element e's fifth bit
        qv += 16 * np.unpackbits(blocks[:, :, fmt.header_bytes - 4:fmt.header_bytes], axis=2,
                                 bitorder="little").astype(np.int64)
    coeffs = np.asarray(coeffs, dtype=np.float32)
    active = np.nonzero(coeffs)[0]
    out = np.zeros((cols // 32, 32), dtype=np.float64)
    for start in range(0, active.shape[0], batch):
        picked = np.asarray(rows)[active[start:start + batch]]
        c = coeffs[active[start:start + batch]]
        s = c[:, None] * d[picked]  # (batch, nb) float32
        scale = np.abs(s).max(axis=0) / np.float32(127)
        inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        k = np.rint(s * inverse).astype(np.int64)
        out += scale[:, None].astype(np.float64) * np.einsum("ib,ibe->be", k, qv[picked])
        if m is not None:
            out += (c[:, None] * m[picked] + np.float32(centre) * s).astype(np.float64).sum(axis=0)[:, None]
    return out.reshape(-1).astype(np.float32)


def matmul(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """weight (n, d), x (T, d) -> (T, n) = x @ weight.T."""
    return (x.astype(np.float64) @ weight.T.astype(np.float64)).astype(np.float32)


def quantize_activations(x: np.ndarray, group: int = 1) -> np.ndarray:
    """The int8 activations the fast quantized kernels use, decoded back to float32 (same shape): per `group`
    32-blocks (1, or 8 for the K-quants: `cpu_quant.SCALE_GROUPS`) d = max|x| / 127, q = round(x * (1/d)), value
    d * q (all in float32, as the kernel)."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32 * group)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
    return (np.rint(blocks * inverse) * scale).astype(np.float32).reshape(np.shape(x))


# ---- twins of `cpu_ops.py` (attention; RMSNorm and RoPE have theirs in model.py) ----------------------------

def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray,
              sequences: np.ndarray) -> np.ndarray:
    """q (T, n_head, hd), query t at positions[t] of sequence sequences[t]; keys, values (n_seq, n_head_kv, n_ctx,
    hd) -> (T, n_head, hd): causal softmax attention over that sequence's first positions[t] + 1 keys, KV head
    h // (n_head // n_head_kv) for query head h, in float64."""
    tokens, n_head, head_dim = q.shape
    group = n_head // keys.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for h in range(n_head):
        for t in range(tokens):
            end, s = positions[t] + 1, sequences[t]
            scores = keys[s, h // group, :end].astype(np.float64) @ q[t, h] / np.sqrt(head_dim)
            weights = np.exp(scores - scores.max())
            out[t, h] = weights / weights.sum() @ values[s, h // group, :end]
    return out.astype(np.float32)


# ---- twins of `kv_rows.py` (the KV cache's storage types) --------------------------------------------------

def kv_encode(values: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """values (..., head_dim) float32 -> (stored values, scales) as the cache of `type_name` holds them
    (`runtime/kv_types.py`): float32; float16 bits (int16); Q8_0 by gguf-py (int8 quants, float16 bits of the scales)."""
    values = np.asarray(values, dtype=np.float32)
    no_scales = np.empty(values.shape[:-1] + (0,), np.int16)
    if type_name == "f32":
        return values.copy(), no_scales
    if type_name == "f16":
        return values.astype(np.float16).view(np.int16), no_scales
    q8_0 = FORMATS[T.Q8_0]
    blocks = quants.quantize(values, q8_0.type).reshape(values.shape[:-1] + (-1, q8_0.block_bytes))
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.int16)[..., 0]
    return np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(values.shape), scales


def kv_decode(stored: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """`kv_encode`'s (stored values, scales) -> float32 values."""
    if stored.dtype == np.float32:
        return stored.copy()
    if stored.dtype == np.int16:
        return stored.view(np.float16).astype(np.float32)
    d = scales.view(np.float16).astype(np.float32)
    blocks = stored.astype(np.float32).reshape(stored.shape[:-1] + (d.shape[-1], -1))
    return (blocks * d[..., None]).reshape(stored.shape)
