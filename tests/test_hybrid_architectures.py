"""The hybrid runtime's GPU side on qwen2, qwen3, gemma3 and Llama 3 (tests/tiny_architectures.py), on
HYBRIDINFER_TEST_DEVICE (cpu here: the torch twins, and the Triton kernels under TRITON_INTERPRET=1; `make gpu-check`
sets cuda): every layer and the output there, or the last
layers only (-ngl), gives the packed CPU engine's logits over a prompt and decoded tokens past gemma3's window of 4;
what each architecture adds is on the side (biases, head norms, per-layer RoPE, windows, post norms, softcap, the
27B's query scale); a ReLU-fied qwen3 runs the split FFN.

Tolerances: float32 KV caches on both sides and float activations (no int8 rounding on the CPU side): F32 weights
1e-5 of the largest logit (the same sums in another order), Q8_0 1e-4."""

import os

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

import hybridinfer
from hybridinfer.hybrid.activations_file import load_profile, save_profile
from hybridinfer.hybrid.placement.plan import solve_split
from hybridinfer.hybrid.placement.split_file import save_split
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.reference.model import rope_tables
from hybridinfer.runtime.activations import profile_activations
from logit_checks import F32_CACHE, relative_error
from tiny_architectures import ARCHITECTURES, GEMMA_WINDOW, SHAPES, write_arch_gguf

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
N_CTX = 32
IDS = [1, 100, 200, 17, 260, 5, 66, 9, 31, 140]  # 10 positions: past gemma3's window
SHORT_IDS = IDS[:7]  # the interpreted Triton kernels' (slow): still past the window
PROMPT = 3  # tokens evaluated at once before the others are decoded one by one
EXACT = dict(float_activations=True, **F32_CACHE)
TOLERANCE = {T.F32: 1e-5, T.Q8_0: 1e-4}


@pytest.fixture(autouse=True)
def float32_gpu_kv(monkeypatch):
    """The GPU side's KV cache float32 on every device."""
    monkeypatch.setenv("HYBRIDINFER_GPU_KV", "f32")


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-archs")
    return {(arch, qtype): write_arch_gguf(folder / f"{arch}-{qtype.name}.gguf", arch, qtype)
            for arch in ARCHITECTURES for qtype in (T.F32, T.Q8_0)}


def prompt_then_decode(engine, ids) -> np.ndarray:
    """(len(ids) - PROMPT + 1, n_vocab): the prompt's last logits, then each decoded token's."""
    engine.reset()
    return np.stack([engine.feed(ids[:end])[0] for end in range(PROMPT, len(ids) + 1)])


def expected_logits(path, ids):
    packed = hybridinfer.load(str(path), n_ctx=N_CTX, **EXACT)
    return prompt_then_decode(packed, ids), packed.logits(ids)


def gpu_engine(path, n_gpu_layers, kernels):
    return hybridinfer.load(str(path), n_ctx=N_CTX, n_gpu_layers=n_gpu_layers, device=DEVICE, gpu_kernels=kernels,
                            **EXACT)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_layer_and_the_output_on_the_gpu_side_equal_the_packed_engine(arch_files, arch, kernels):
    if kernels == "triton":
        pytest.importorskip("triton", reason="the Triton kernels need triton")
    path, ids = arch_files[arch, T.F32], IDS if kernels == "torch" else SHORT_IDS
    decoded, batch = expected_logits(path, ids)
    engine = gpu_engine(path, SHAPES[arch][0] + 1, kernels)
    side = engine.gpu_side
    assert sorted(side.layers) == list(range(SHAPES[arch][0])) and side.output is not None
    assert relative_error(prompt_then_decode(engine, ids), decoded) < TOLERANCE[T.F32]
    if kernels == "torch":  # the prompt path is the twin's for both kernel sets
        assert relative_error(engine.logits(ids), batch) < TOLERANCE[T.F32]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_last_layers_on_the_gpu_side_equal_the_packed_engine(arch_files, arch):
    """-ngl n_layer / 2 (gemma3: two sliding-window layers and a global one), Q8_0 weights: NEOX models' Q and K rows
    reordered as quantized blocks."""
    path = arch_files[arch, T.Q8_0]
    decoded, batch = expected_logits(path, IDS)
    n_layer = SHAPES[arch][0]
    engine = gpu_engine(path, n_layer // 2, "torch")
    assert sorted(engine.gpu_side.layers) == list(range(n_layer - n_layer // 2, n_layer))
    assert engine.gpu_side.output is None
    assert relative_error(prompt_then_decode(engine, IDS), decoded) < TOLERANCE[T.Q8_0]
    assert relative_error(engine.logits(IDS), batch) < TOLERANCE[T.Q8_0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_gpu_side_holds_what_each_architecture_adds(arch_files, arch):
    engine = gpu_engine(arch_files[arch, T.F32], SHAPES[arch][0], "torch")
    c, side = engine.config, engine.gpu_side
    for index, layer in side.layers.items():
        heads = layer.heads
        assert (heads.bias is not None) == (arch == "qwen2")
        assert (heads.q_norm is not None) == (heads.k_norm is not None) == (arch in ("qwen3", "gemma3"))
        assert (layer.post_attention_norm is not None) == (layer.post_ffw_norm is not None) == (arch == "gemma3")
        assert heads.window == (GEMMA_WINDOW if arch == "gemma3" and index % 6 != 5 else 0)
        cos, sin = rope_tables(c, N_CTX, index)
        assert torch.equal(layer.rope_cos, cos) and torch.equal(layer.rope_sin, sin)
    if arch == "gemma3":  # the sliding-window layers' base differs from the global layer's
        assert not torch.equal(side.layers[0].rope_cos, side.layers[5].rope_cos)
        assert side.layers[0].rope_cos is side.layers[1].rope_cos  # one copy per (base, scale)


def test_gpu_output_softcaps_the_logits(tmp_path):
    """A final_logit_softcapping key (Gemma 2's) on a gemma3 file: the GPU side's output caps as the CPU's does (in
    torch operators after the output GEMV, the same for both kernel sets)."""
    path = write_arch_gguf(tmp_path / "capped.gguf", "gemma3", logit_softcap=0.5)
    decoded, _ = expected_logits(path, SHORT_IDS)
    assert np.abs(decoded).max() <= 0.5  # capped (tanh rounds to 1 in float32 at the largest)
    engine = gpu_engine(path, SHAPES["gemma3"][0] + 1, "torch")
    assert relative_error(prompt_then_decode(engine, SHORT_IDS), decoded) < TOLERANCE[T.F32]


def test_gemma3_27b_query_scale_on_the_gpu_side(tmp_path):
    """A 62-layer gemma3 (llama.cpp's 27B): queries scaled by sqrt(head_dim / (n_embd / n_head)) on the GPU side."""
    path = write_arch_gguf(tmp_path / "gemma3-62.gguf", "gemma3", n_layer=62)
    decoded, _ = expected_logits(path, SHORT_IDS)
    engine = gpu_engine(path, 63, "torch")
    assert engine.config.query_scale != 1
    assert {layer.heads.query_scale for layer in engine.gpu_side.layers.values()} == {engine.config.query_scale}
    assert relative_error(prompt_then_decode(engine, SHORT_IDS), decoded) < TOLERANCE[T.F32]


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_a_relu_qwen3_runs_the_split_ffn(tmp_path, kernels):
    """A ReLU-fied qwen3 (Q/K head norms, NEOX RoPE): a split (solved in groups of 16 neurons: the default 256 is
    more than a tiny layer) with every layer, the output and some hot neurons on the GPU side, the cold ones on the
    CPU, equals the packed engine's exact sparse FFN."""
    if kernels == "triton":
        pytest.importorskip("triton", reason="the Triton kernels need triton")
    path = write_arch_gguf(tmp_path / "qwen3-relu.gguf", "qwen3", activation="relu")
    reference = hybridinfer.load(str(path), n_ctx=N_CTX, backend="reference")
    activations = tmp_path / "qwen3-relu.act.gguf"
    save_profile(profile_activations(reference, [IDS]), activations)
    m = memory_model(reference.file, reference.config, N_CTX, DEVICE)
    budget = m.workspace + sum(m.layer) + m.output + 40 * m.neuron[0]
    profile = load_profile(str(activations), reference.fingerprint)
    save_split(solve_split(reference.config, profile, m, budget, 16), tmp_path / "qwen3-relu.split.gguf")
    ids = IDS if kernels == "torch" else SHORT_IDS
    packed = hybridinfer.load(str(path), n_ctx=N_CTX, exact=True, **EXACT)
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, split=str(tmp_path / "qwen3-relu.split.gguf"), device=DEVICE,
                              gpu_kernels=kernels, exact=True, **EXACT)
    side = engine.gpu_side
    assert sorted(side.layers) == [0, 1] and 0 < side.n_hot < 2 * reference.config.n_ff
    assert relative_error(prompt_then_decode(engine, ids), prompt_then_decode(packed, ids)) < TOLERANCE[T.F32]
