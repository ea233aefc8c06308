"""qwen2, qwen3, gemma3 and Llama 3 (tests/tiny_architectures.py): what the config reads, the packed engine against
the reference forward pass (both built from the one table of tensors), the reference's NEOX RoPE and sliding window
against plain formulas, and the modes that refuse these architectures (the GPU side's runs of them:
tests/test_hybrid_architectures.py)."""

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.tensor_shapes import expected_shape
from hybridinfer.reference.model import apply_rope, rope_tables
from hybridinfer.runtime.rope_rows import head_rows, pair_order
from logit_checks import F32_CACHE, IDS, decode_logits, relative_error
from tiny_architectures import ARCHITECTURES, GEMMA_WINDOW, N_EMBD, SHAPES, write_arch_gguf

LONG_IDS = IDS + [7, 8, 150, 33, 12, 90]  # 16 tokens: past gemma3's tiny window of 4


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archs")
    return {(arch, qtype): write_arch_gguf(folder / f"{arch}-{qtype.name}.gguf", arch, qtype)
            for arch in ARCHITECTURES for qtype in (T.F32, T.Q8_0)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_reads_each_architecture(arch_files, arch):
    model = GGUFFile(arch_files[arch, T.F32])
    c = ModelConfig.from_gguf(model)
    n_layer, n_head, n_head_kv, head_dim = SHAPES[arch]
    assert (c.n_layer, c.n_head, c.n_head_kv, c.head_dim) == (n_layer, n_head, n_head_kv, head_dim)
    assert c.attention_bias == (arch == "qwen2")
    assert c.qk_norm == (arch in ("qwen3", "gemma3"))
    assert c.post_norms == (arch == "gemma3")
    assert c.rope_neox == (arch != "llama3")
    assert (c.rope_freq_factors is not None) == (arch == "llama3")
    if arch == "gemma3":
        assert c.activation == "gelu" and c.embedding_scale == pytest.approx(math.sqrt(N_EMBD))
        assert [c.window(i) for i in range(6)] == [GEMMA_WINDOW] * 5 + [0]
        assert c.rope_settings(0) == (10000.0, 1.0) and c.rope_settings(5) == (1e6, 1.0)
        assert c.tied_embeddings
    else:
        assert c.activation == "silu" and c.embedding_scale == 1.0 and c.sliding_window == 0
    for name, tensor in model.tensors.items():  # the table knows every tensor's shape
        assert tuple(tensor.shape) == expected_shape(c, name), name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_float_activations_equal_reference(arch_files, arch):
    path = arch_files[arch, T.F32]
    expected = hybridinfer.load(str(path), n_ctx=64, backend="reference").logits(LONG_IDS)
    packed = hybridinfer.load(str(path), n_ctx=64, float_activations=True, **F32_CACHE)
    assert relative_error(packed.logits(LONG_IDS), expected) < 1e-4
    assert relative_error(decode_logits(packed, LONG_IDS), expected) < 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_q8_0_int8_activations_close_to_reference(arch_files, arch):
    path = arch_files[arch, T.Q8_0]
    expected = hybridinfer.load(str(path), n_ctx=64, backend="reference").logits(LONG_IDS)
    packed = hybridinfer.load(str(path), n_ctx=64)  # int8 activations, f16 KV cache: the default run
    assert relative_error(packed.logits(LONG_IDS), expected) < 0.1
    assert relative_error(decode_logits(packed, LONG_IDS), packed.logits(LONG_IDS)) < 1e-2


def test_the_sliding_window_masks_older_keys(arch_files):
    """gemma3's window is no no-op: an unbounded window (the same RoPE bases) changes the logits of the tokens past
    it only."""
    path = arch_files["gemma3", T.F32]
    engine = hybridinfer.load(str(path), n_ctx=64, backend="reference")
    windowed = engine.logits(LONG_IDS)
    config = engine.config
    whole = hybridinfer.reference.model.Transformer(
        type(config)(**{**config.__dict__, "sliding_window": 10**6}), engine.model.weights, 64)
    assert relative_error(whole.forward(torch.tensor(LONG_IDS), 0).numpy(), windowed) > 1e-3
    assert relative_error(whole.forward(torch.tensor(LONG_IDS[:GEMMA_WINDOW]), 0).numpy(),
                          windowed[:GEMMA_WINDOW]) < 1e-6  # within the window the two agree


def test_neox_rope_of_the_reference_is_the_half_rotation():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((5, 2, 8)).astype(np.float32))
    angles = torch.from_numpy(rng.uniform(-3, 3, (5, 4)).astype(np.float32))
    cos, sin = angles.cos(), angles.sin()
    rotated = apply_rope(x, cos, sin, neox=True)
    first, second = x[..., :4], x[..., 4:]
    c, s = cos[:, None], sin[:, None]
    assert torch.allclose(rotated, torch.cat((first * c - second * s, second * c + first * s), -1), atol=1e-6)
    # the loader's row order turns the NEOX rotation into the adjacent-pair one
    order = torch.from_numpy(pair_order(8, 8))
    assert torch.allclose(apply_rope(x[..., order], cos, sin)[..., :], rotated[..., order], atol=1e-6)


def test_llama3_rope_freqs_divide_the_frequencies(arch_files):
    config = ModelConfig.from_gguf(GGUFFile(arch_files["llama3", T.F32]))
    cos, _ = rope_tables(config, 8)
    j, p = 3, 5
    angle = p * config.rope_base ** (-2 * j / config.rope_dim) / config.rope_freq_factors[j]
    assert cos[p, j].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_head_rows_permute_within_heads_only(arch_files):
    config = ModelConfig.from_gguf(GGUFFile(arch_files["qwen3", T.F32]))
    rows = head_rows(config, config.n_head)
    assert sorted(rows.tolist()) == list(range(config.n_head * config.head_dim))
    assert (rows // config.head_dim == np.arange(rows.size) // config.head_dim).all()
    assert head_rows(ModelConfig.from_gguf(GGUFFile(arch_files["llama3", T.F32])), 4) is None


@pytest.mark.parametrize("options, message", [
    (dict(exact=True), "GELU"),
    (dict(vram_budget="1GiB", device="cpu", gpu_kernels="torch"), "split FFN .*GELU")])
def test_gemma3_refuses_sparse_modes_in_one_line(arch_files, options, message):
    """GELU has no zeros to skip: the sparse FFN and the hybrid runtime's split FFN refuse it (-ngl runs it:
    tests/test_hybrid_architectures.py)."""
    with pytest.raises(HybridInferError, match=message) as info:
        hybridinfer.load(str(arch_files["gemma3", T.F32]), n_ctx=64, **options)
    assert "\n" not in str(info.value)


def test_gpu_side_runs_llama3_rope_freqs(arch_files):
    """-ngl on the CPU device with the torch twins: Llama 3's rope_freqs are in the GPU side's RoPE tables."""
    path = str(arch_files["llama3", T.F32])
    expected = hybridinfer.load(path, n_ctx=64, backend="reference").logits(LONG_IDS)
    engine = hybridinfer.load(path, n_ctx=64, n_gpu_layers=3, device="cpu", gpu_kernels="torch",
                              float_activations=True, **F32_CACHE)
    assert relative_error(decode_logits(engine, LONG_IDS), expected) < 1e-4


def test_linear_rope_scaling_is_read_and_other_kinds_are_refused(tmp_path):
    path = write_arch_gguf(tmp_path / "linear.gguf", "llama3", rope_scaling=("linear", 4.0))
    config = ModelConfig.from_gguf(GGUFFile(path))
    assert config.rope_scale == 0.25 and "rope scale 0.25" in config.features()
    expected = hybridinfer.load(str(path), n_ctx=64, backend="reference").logits(LONG_IDS)
    packed = hybridinfer.load(str(path), n_ctx=64, float_activations=True, **F32_CACHE)
    assert relative_error(decode_logits(packed, LONG_IDS), expected) < 1e-4
    yarn = write_arch_gguf(tmp_path / "yarn.gguf", "llama3", rope_scaling=("yarn", 4.0))
    with pytest.raises(HybridInferError, match="rope.scaling.type") as info:
        ModelConfig.from_gguf(GGUFFile(yarn))
    assert "\n" not in str(info.value)


def test_gemma3_27b_scales_queries_by_its_width_as_llama_cpp(tmp_path):
    """llama.cpp takes a 62-layer gemma3 for the 27B, whose attention scale is 1/sqrt(n_embd / n_head), not
    1/sqrt(head_dim)."""
    path = write_arch_gguf(tmp_path / "gemma3-62.gguf", "gemma3", n_layer=62)
    config = ModelConfig.from_gguf(GGUFFile(path))
    n_head, head_dim = SHAPES["gemma3"][1], SHAPES["gemma3"][3]
    assert config.query_scale == pytest.approx(math.sqrt(head_dim / (N_EMBD / n_head)))
    expected = hybridinfer.load(str(path), n_ctx=64, backend="reference").logits(LONG_IDS)
    packed = hybridinfer.load(str(path), n_ctx=64, float_activations=True, **F32_CACHE)
    assert relative_error(decode_logits(packed, LONG_IDS), expected) < 1e-4
