"""The GPU side's attention step: its torch twin (`gpu/attention_reference.py`, the cache read in place window by
window) against plain attention over the whole cache, and the Triton flash-decoding kernels
(`gpu/attention_kernels.py`, under TRITON_INTERPRET=1 on the CPU, set by conftest.py) against the twin; float32 and
float16 caches, grouped-query heads, partial RoPE, positions across windows and splits."""

import math
import os

import pytest
import torch

from hybridinfer.gpu import attention_reference
from triton_compile import run_compile_tool, skip_without_nvidia_tools

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
# the kernel against the twin: a float32 cache takes float32 products; a float16 cache takes them on tensor cores, the
# queries and the softmax weights rounded to float16 (docs/hybrid.md), so the result may move by about their rounding
KERNEL_BOUND = {torch.float32: 1e-5, torch.float16: 2e-3}


def assert_kernel_close(got, expected, dtype):
    """The kernel's result against the twin's, within the bound of the cache's type."""
    bound = KERNEL_BOUND[dtype]
    print(f"{dtype}: largest difference {(got - expected).abs().max():.2e}")
    assert torch.allclose(got, expected, rtol=bound, atol=bound), (got - expected).abs().max()


def plain_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head):
    """The textbook form: the whole prefix as float32, each key/value head repeated for its group."""
    from hybridinfer.reference.model import apply_rope
    n, n_kv, head_dim = qkv.shape[0], k_cache.shape[1], k_cache.shape[2]
    q_rows, kv_rows, end = n_head * head_dim, n_kv * head_dim, start_pos + n
    c, s = cos[start_pos:end], sin[start_pos:end]
    q = apply_rope(qkv[:, :q_rows].reshape(n, n_head, head_dim), c, s)
    k_cache[start_pos:end] = apply_rope(qkv[:, q_rows:q_rows + kv_rows].reshape(n, n_kv, head_dim), c, s)
    v_cache[start_pos:end] = qkv[:, q_rows + kv_rows:].reshape(n, n_kv, head_dim)
    keys = k_cache[:end].float().repeat_interleave(n_head // n_kv, dim=1).transpose(0, 1)
    values = v_cache[:end].float().repeat_interleave(n_head // n_kv, dim=1).transpose(0, 1)
    scores = q.transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(head_dim)
    future = torch.arange(end)[None, :] > torch.arange(start_pos, end)[:, None]
    scores = scores.masked_fill(future.to(scores.device), float("-inf"))
    return (scores.softmax(-1) @ values).transpose(0, 1).reshape(n, q_rows)


def case(seed, n_ctx, n_head, n_kv, head_dim, rope_dim, dtype):
    """Random qkv, caches filled with random past keys/values, RoPE tables."""
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(n_ctx, n_kv, head_dim, generator=gen).to(dtype).to(DEVICE)
    v_cache = torch.randn(n_ctx, n_kv, head_dim, generator=gen).to(dtype).to(DEVICE)
    angles = torch.outer(torch.arange(n_ctx, dtype=torch.float64),
                         10000.0 ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim))
    return k_cache, v_cache, angles.cos().float().to(DEVICE), angles.sin().float().to(DEVICE), gen


SHAPES = [(8, 2, 16, 16), (6, 3, 24, 16), (4, 4, 32, 32)]  # n_head, n_kv, head_dim, rope_dim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}kv{}d{}r{}".format(*s))
@pytest.mark.parametrize("start_pos,n", [(0, 1), (7, 1), (299, 1), (0, 6), (250, 9)])
def test_twin_equals_plain_attention(shape, dtype, start_pos, n):
    n_head, n_kv, head_dim, rope_dim = shape
    k_cache, v_cache, cos, sin, gen = case(start_pos + n, 320, n_head, n_kv, head_dim, rope_dim, dtype)
    qkv = torch.randn(n, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_plain, v_plain = k_cache.clone(), v_cache.clone()
    expected = plain_attention(qkv, k_plain, v_plain, cos, sin, start_pos, n_head)
    got = attention_reference.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head)
    assert torch.equal(k_cache, k_plain) and torch.equal(v_cache, v_plain)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}kv{}d{}r{}".format(*s))
@pytest.mark.parametrize("start_pos", [0, 7, 40, 299])
def test_triton_kernels_equal_the_twin(shape, dtype, start_pos):
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import attention_kernels
    n_head, n_kv, head_dim, rope_dim = shape
    k_cache, v_cache, cos, sin, gen = case(start_pos, 320, n_head, n_kv, head_dim, rope_dim, dtype)
    qkv = torch.randn(1, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_twin, v_twin = k_cache.clone(), v_cache.clone()
    expected = attention_reference.decode_attention(qkv, k_twin, v_twin, cos, sin, start_pos, n_head)
    got = attention_kernels.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head)
    assert torch.equal(k_cache, k_twin) and torch.equal(v_cache, v_twin)
    assert_kernel_close(got, expected, dtype)


def test_splits_per_key_value_head_fill_the_gpu_for_grouped_heads():
    """About TARGET_PROGRAMS programs, a power of two per head, within 4..MAX_SPLITS."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu.attention_kernels import MAX_SPLITS, splits_for
    assert [splits_for(n) for n in (1, 4, 8, 32, 40, 64, 128)] == [MAX_SPLITS, 64, 64, 16, 16, 8, 4]
    from hybridinfer.gpu.attention_kernels import Scratch, shares
    with pytest.raises(ValueError, match="power of two"):
        Scratch(8, 2, 16, torch.device(DEVICE), splits=12)
    scratch = Scratch(8, 2, 16, torch.device(DEVICE), splits=64)  # a launch: no more shares than the cache has tiles
    assert [shares(scratch, torch.empty(n, 2, 16, dtype=dtype)) for n, dtype in
            ((64, torch.float16), (100, torch.float16), (100, torch.float32), (10000, torch.float16))] == [1, 2, 4, 64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("splits", [1, 4, 64])
@pytest.mark.parametrize("start_pos", [299, 4100])
def test_triton_kernels_equal_the_twin_at_any_split_count(splits, dtype, start_pos):
    """One split, a few, and MAX_SPLITS (past position 64 x 64 every one of them holds positions; the merge reads
    them a chunk at a time; at 299 the cache's length caps them at 8 or 16): the same result, the new position
    written once."""
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import attention_kernels
    n_head, n_kv, head_dim, rope_dim = SHAPES[0]
    k_cache, v_cache, cos, sin, gen = case(splits + start_pos, start_pos + 8, n_head, n_kv, head_dim, rope_dim,
                                           dtype)
    qkv = torch.randn(1, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_twin, v_twin = k_cache.clone(), v_cache.clone()
    expected = attention_reference.decode_attention(qkv, k_twin, v_twin, cos, sin, start_pos, n_head)
    scratch = attention_kernels.Scratch(n_head, n_kv, head_dim, torch.device(DEVICE), splits=splits)
    got = attention_kernels.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, scratch=scratch)
    assert torch.equal(k_cache, k_twin) and torch.equal(v_cache, v_twin)
    assert_kernel_close(got, expected, dtype)
    assert not scratch.counters.any()


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_the_position_read_from_the_device_and_advanced(kernels):
    """With the position as a device tensor and `advance`: the same result as with start_pos alone, and the tensor
    then holds the next position (the kernel's last program adds 1; the twin does the same)."""
    if kernels == "triton":
        pytest.importorskip("triton", reason="the Triton kernels need triton")
        from hybridinfer.gpu import attention_kernels as ops
    else:
        ops = attention_reference
    n_head, n_kv, head_dim, rope_dim = SHAPES[1]
    start_pos = 40
    k_cache, v_cache, cos, sin, gen = case(17, 64, n_head, n_kv, head_dim, rope_dim, torch.float32)
    qkv = torch.randn(1, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_twin, v_twin = k_cache.clone(), v_cache.clone()
    expected = attention_reference.decode_attention(qkv, k_twin, v_twin, cos, sin, start_pos, n_head).clone()
    position = torch.full((1,), start_pos, dtype=torch.int32, device=DEVICE)
    got = ops.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, position, advance=True)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    assert torch.equal(k_cache, k_twin) and int(position[0]) == start_pos + 1
    ops.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos + 1, n_head, position)
    assert int(position[0]) == start_pos + 1  # not advanced unless asked
    if kernels == "triton":  # the tickets of the heads' last splits and of the advance, left at 0 for the next launch
        assert not ops.scratch_for(n_head, n_kv, head_dim, qkv.device).counters.any()


def options_case(gen, n_head, n_kv, head_dim, bias, norms, query_scale, window):
    """Random biases and head-norm weights (not all ones), as a layer of qwen2 (bias), qwen3/gemma3 (norms) has."""
    rows = (n_head + 2 * n_kv) * head_dim
    return attention_reference.HeadOptions(
        bias=torch.randn(rows, generator=gen).to(DEVICE) if bias else None,
        q_norm=(1 + 0.3 * torch.randn(head_dim, generator=gen)).to(DEVICE) if norms else None,
        k_norm=(1 + 0.3 * torch.randn(head_dim, generator=gen)).to(DEVICE) if norms else None,
        eps=1e-6, query_scale=query_scale, window=window)


def plain_attention_with(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, o):
    """The textbook form of what `HeadOptions` adds (as `reference/model.py` computes it)."""
    from hybridinfer.reference.model import apply_rope, optional_norm
    n, n_kv, head_dim = qkv.shape[0], k_cache.shape[1], k_cache.shape[2]
    q_rows, kv_rows, end = n_head * head_dim, n_kv * head_dim, start_pos + n
    qkv = qkv if o.bias is None else qkv + o.bias
    c, s = cos[start_pos:end], sin[start_pos:end]
    q = optional_norm(qkv[:, :q_rows].reshape(n, n_head, head_dim), o.q_norm, o.eps)
    k = optional_norm(qkv[:, q_rows:q_rows + kv_rows].reshape(n, n_kv, head_dim), o.k_norm, o.eps)
    q = apply_rope(q, c, s) * o.query_scale
    k_cache[start_pos:end] = apply_rope(k, c, s)
    v_cache[start_pos:end] = qkv[:, q_rows + kv_rows:].reshape(n, n_kv, head_dim)
    keys = k_cache[:end].float().repeat_interleave(n_head // n_kv, dim=1).transpose(0, 1)
    values = v_cache[:end].float().repeat_interleave(n_head // n_kv, dim=1).transpose(0, 1)
    scores = q.transpose(0, 1) @ keys.transpose(1, 2) / math.sqrt(head_dim)
    key_pos, query_pos = torch.arange(end)[None, :], torch.arange(start_pos, end)[:, None]
    hidden = key_pos > query_pos
    if o.window:
        hidden |= query_pos - key_pos >= o.window
    scores = scores.masked_fill(hidden.to(scores.device), float("-inf"))
    return (scores.softmax(-1) @ values).transpose(0, 1).reshape(n, q_rows)


# bias, norms, query scale, window: qwen2's, qwen3's, a gemma3 sliding layer's, Gemma 3 27B's query scale
OPTIONS = [(True, False, 1.0, 0), (False, True, 1.0, 0), (False, True, 1.0, 5), (True, True, 0.6, 40)]


def options_id(o):
    return "bias{}-norm{}-qs{}-w{}".format(*(int(v) if isinstance(v, bool) else v for v in o))


@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
@pytest.mark.parametrize("start_pos,n", [(0, 1), (37, 1), (299, 1), (0, 9), (250, 9), (0, 300)])
def test_twin_with_head_options_equals_plain_attention(options, start_pos, n):
    n_head, n_kv, head_dim, rope_dim = 8, 2, 16, 16
    k_cache, v_cache, cos, sin, gen = case(start_pos + 2 * n, 320, n_head, n_kv, head_dim, rope_dim, torch.float32)
    o = options_case(gen, n_head, n_kv, head_dim, *options)
    qkv = torch.randn(n, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_plain, v_plain = k_cache.clone(), v_cache.clone()
    expected = plain_attention_with(qkv, k_plain, v_plain, cos, sin, start_pos, n_head, o)
    got = attention_reference.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, options=o)
    assert torch.allclose(k_cache, k_plain, rtol=1e-5, atol=1e-5) and torch.equal(v_cache, v_plain)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
@pytest.mark.parametrize("start_pos", [3, 40, 299])
def test_triton_kernels_with_head_options_equal_the_twin(options, dtype, start_pos):
    pytest.importorskip("triton", reason="the Triton kernels need triton")
    from hybridinfer.gpu import attention_kernels
    n_head, n_kv, head_dim, rope_dim = 6, 3, 24, 16
    k_cache, v_cache, cos, sin, gen = case(start_pos + 11, 320, n_head, n_kv, head_dim, rope_dim, dtype)
    o = options_case(gen, n_head, n_kv, head_dim, *options)
    qkv = torch.randn(1, (n_head + 2 * n_kv) * head_dim, generator=gen).to(DEVICE)
    k_twin, v_twin = k_cache.clone(), v_cache.clone()
    expected = attention_reference.decode_attention(qkv, k_twin, v_twin, cos, sin, start_pos, n_head, options=o)
    got = attention_kernels.decode_attention(qkv, k_cache, v_cache, cos, sin, start_pos, n_head, options=o)
    assert torch.allclose(k_cache.float(), k_twin.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(v_cache, v_twin)
    assert_kernel_close(got, expected, dtype)


def test_a_decode_step_allocates_no_more_at_position_4000_than_at_10(tmp_path):
    """The GPU side's attention part (RMSNorm, QKV, attention over the cache in place, output projection, residual)
    on the CPU device with the torch twins, n_ctx 4096: the peak of the bytes torch allocates during the step
    (`allocations.PeakAllocation`) is the same at position 4000 as at position 10 (the whole-prefix float copy of
    old, `k_cache[:end].float().repeat_interleave(...)`, grew with the position)."""
    from types import SimpleNamespace

    import hybridinfer
    from allocations import PeakAllocation
    from hybridinfer.hybrid.gpu_parts import GPUAttention
    from tiny_models import random_weights, write_tiny_gguf
    path = write_tiny_gguf(tmp_path / "m.gguf", random_weights(seed=8, n_layer=1), activation="relu")
    engine = hybridinfer.load(str(path), n_ctx=4096, n_gpu_layers=1, device="cpu", gpu_kernels="torch")
    part = next(p for p in engine.model.layers[0] if isinstance(p, GPUAttention))
    x = torch.randn(1, engine.config.n_embd, generator=torch.Generator().manual_seed(4))
    peaks = {}
    for position in (10, 4000, 10):
        state = SimpleNamespace(on_device=x.clone(), start_pos=position)
        with PeakAllocation() as allocated:
            part(0, state)
        peaks[position] = allocated.peak
    assert 0 < peaks[4000] <= peaks[10], peaks


def test_the_step_kernels_compile_for_sm_90():
    """Compiled (not interpreted) for an H100/H200 without a GPU: what only compiling checks."""
    skip_without_nvidia_tools("ptxas")
    result = run_compile_tool("compile_step_kernels", "--arch", "90")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) == 5, result.stdout
