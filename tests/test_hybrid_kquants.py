"""The hybrid runtime on K-quant files (Q4_K, Q5_K, Q6_K): the GPU side reads their super-blocks as stored, the CPU
side decodes them (to F32, until its kernels read them), and the logits are the packed engine's.

gguf-py has no K-quant encoder, so `k_quantize` below makes the tiny models' blocks (a plain min/max quantizer,
checked against gguf's decoder); llama.cpp's quantizer makes real ones."""

import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.gpu.weights import K_QUANT_FIELDS
from hybridinfer.hybrid.activations_file import save_profile
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.runtime.activations import profile_activations
from logit_checks import F32_CACHE
from tiny_models import random_weights, write_tiny_gguf

IDS = [1, 100, 200, 17, 270, 5, 66, 9]
DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
N_LAYER, N_EMBD, N_FF, N_CTX = 2, 256, 512, 32  # rows of whole 256-element super-blocks


def k_quantize(values: np.ndarray, qtype: T) -> np.ndarray:
    """(rows, cols) float32 -> (rows, cols / 256 * block bytes) uint8 K-quant blocks: each sub-block's scale (and
    minimum) from its range, quantized to 6 bits (Q6_K: int8) against the super-block's f16 d (and dmin)."""
    rows = values.shape[0]
    x = values.reshape(-1, 256).astype(np.float32)
    n = len(x)
    if qtype == T.Q6_K:
        sub = x.reshape(n, 16, 16)
        step = np.abs(sub).max(axis=-1) / 31
        d = (step.max(axis=-1, keepdims=True) / 127).astype(np.float16)
        sc = np.clip(np.round(step / np.maximum(d.astype(np.float32), 1e-30)), 0, 127)
        unit = d.astype(np.float32) * sc
        q = np.clip(np.round(sub / np.maximum(unit, 1e-30)[..., None]), -32, 31).astype(np.int32) + 32
        q = q.reshape(n, 256)
        halves = q.reshape(n, 2, 2, 64)
        ql = (halves[:, :, 0] & 15) | ((halves[:, :, 1] & 15) << 4)
        qh = sum(((q.reshape(n, 2, 4, 32)[:, :, k] >> 4) & 3) << (2 * k) for k in range(4))
        parts = [ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8), d.view(np.uint8)]
        return np.concatenate([p.astype(np.uint8) for p in parts], axis=1).reshape(rows, -1)
    top = 31 if qtype == T.Q5_K else 15
    sub = x.reshape(n, 8, 32)
    low = np.minimum(sub.min(axis=-1), 0)
    step, minimum = (sub.max(axis=-1) - low) / top, -low
    d = (step.max(axis=-1, keepdims=True) / 63).astype(np.float16)
    dmin = (minimum.max(axis=-1, keepdims=True) / 63).astype(np.float16)
    sc = np.clip(np.round(step / np.maximum(d.astype(np.float32), 1e-30)), 0, 63).astype(np.int32)
    m = np.clip(np.round(minimum / np.maximum(dmin.astype(np.float32), 1e-30)), 0, 63).astype(np.int32)
    unit, offset = d.astype(np.float32) * sc, dmin.astype(np.float32) * m
    q = np.clip(np.round((sub + offset[..., None]) / np.maximum(unit, 1e-30)[..., None]), 0, top).astype(np.int32)
    scales = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6), (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)], axis=1)
    pairs = q.reshape(n, 4, 2, 32)
    nibbles = ((pairs[:, :, 0] & 15) | ((pairs[:, :, 1] & 15) << 4)).reshape(n, 128)
    parts = [d.view(np.uint8), dmin.view(np.uint8), scales]
    if qtype == T.Q5_K:
        parts.append(sum(((q[:, s] >> 4) & 1) << s for s in range(8)))  # (n, 32): bit s of byte l
    parts.append(nibbles)
    return np.concatenate([p.astype(np.uint8) for p in parts], axis=1).reshape(rows, -1)


@pytest.mark.parametrize("qtype", list(K_QUANT_FIELDS), ids=lambda t: t.name)
def test_k_quantize_makes_blocks_gguf_decodes_close_to_the_values(qtype):
    rng = np.random.default_rng(3)
    values = rng.standard_normal((6, 512)).astype(np.float32)
    blocks = k_quantize(values, qtype)
    assert blocks.shape == (6, 2 * gguf.GGML_QUANT_SIZES[qtype][1])
    decoded = gguf.quants.dequantize(blocks, qtype).reshape(values.shape)
    bound = {T.Q4_K: 0.15, T.Q5_K: 0.08, T.Q6_K: 0.04}[qtype]  # RMS error / RMS value
    assert 0 < np.sqrt(np.mean((decoded - values) ** 2)) < bound * np.sqrt(np.mean(values ** 2))


@pytest.fixture(scope="module", params=list(K_QUANT_FIELDS), ids=lambda t: t.name)
def k_quant_model(request, tmp_path_factory):
    """A FATReLU model whose 2-D weights are K-quant blocks, with its activation counts beside it."""
    qtype, folder = request.param, tmp_path_factory.mktemp("k")
    weights = random_weights(seed=5, n_layer=N_LAYER, n_embd=N_EMBD, n_ff=N_FF, gate_bias=-8.0)
    encode = gguf.quants.quantize
    with pytest.MonkeyPatch.context() as patch:  # tiny_models encodes through gguf, which lacks K-quants
        patch.setattr(gguf.quants, "quantize", lambda v, t: k_quantize(v, t) if t == qtype else encode(v, t))
        path = write_tiny_gguf(folder / "relu.gguf", weights, activation="fatrelu", threshold=0.02, weight_type=qtype)
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, backend="reference")
    save_profile(profile_activations(engine, [IDS]), folder / "relu.act.gguf")
    return path, qtype


def decode_logits(engine):
    engine.reset()
    return np.stack([engine.feed(IDS[: i + 1])[0] for i in range(len(IDS))])


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_hybrid_reads_k_quants_and_gives_the_packed_logits(k_quant_model, kernels, monkeypatch):
    """float32 KV caches on both sides (the GPU side's by $HYBRIDINFER_GPU_KV, CUDA's default being float16)."""
    monkeypatch.setenv("HYBRIDINFER_GPU_KV", "f32")
    if kernels == "triton":
        pytest.importorskip("triton", reason="triton is not installed, so the Triton kernels cannot run")
    path, qtype = k_quant_model
    packed = hybridinfer.load(str(path), n_ctx=N_CTX, exact=True, float_activations=True, **F32_CACHE)
    expected = decode_logits(packed)
    m = memory_model(packed.file, packed.config, N_CTX, DEVICE)
    budget = m.workspace + sum(m.layer) + m.output + N_FF * m.neuron[0]  # about half of the neurons
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, vram_budget=str(budget), device=DEVICE, gpu_kernels=kernels,
                              exact=True, float_activations=True, **F32_CACHE)
    side = engine.gpu_side
    assert sorted(side.layers) == list(range(N_LAYER)) and 0 < side.n_hot < N_LAYER * N_FF
    assert side.output.qtype == qtype
    for layer in side.layers.values():
        assert layer.qkv.qtype == layer.wo.qtype == qtype
        assert layer.hot is None or layer.gate.qtype == layer.up.qtype == qtype
    assert side.nbytes + m.workspace <= budget  # the memory model counted what the side holds
    error = np.abs(decode_logits(engine) - expected).max() / np.abs(expected).max()
    assert error < 1e-5
