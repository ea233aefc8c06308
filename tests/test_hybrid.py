"""The hybrid runtime on the packed engine: at every placement it computes what the packed engine computes.

The GPU side runs on HYBRIDINFER_TEST_DEVICE (cpu here; `make gpu-check` sets cuda) with both kernel sets: the
torch twins, and the Triton kernels (under TRITON_INTERPRET=1 on the CPU, set by conftest.py).

KV caches: the exactness tests (1e-5) compare float32 caches on both sides: the CPU's by type_k/type_v f32
(F32_CACHE), the GPU side's by $HYBRIDINFER_GPU_KV=f32 (set for every test here, on CUDA too, where the default is
float16). `test_float16_gpu_kv_cache_stays_close` states the float16 cache's bound."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T
from gguf import quants

import hybridinfer
from hybridinfer.model_file.weight_formats import GPU_NATIVE_FORMATS
from hybridinfer.cli.main import cli
from hybridinfer.errors import HybridInferError
from hybridinfer.hybrid.setup import memory_model
from hybridinfer.hybrid.split_ffn import ColdHalf, SplitFFN
from hybridinfer.hybrid.placement.plan import gpu_layers_for, solve_split
from hybridinfer.hybrid.placement.split_file import load_split, save_split
from hybridinfer.runtime.activations import profile_activations
from hybridinfer.hybrid.activations_file import load_profile, save_profile
from logit_checks import F32_CACHE
from tiny_models import random_weights, write_tiny_gguf

IDS = [1, 100, 200, 17, 270, 5, 66, 9, 33, 12]
DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
N_LAYER, N_FF, N_CTX = 3, 192, 64


@pytest.fixture(autouse=True)
def float32_gpu_kv(monkeypatch):
    """The GPU side's KV cache float32 on every device (a test may set f16 instead), its time measured on CUDA
    too (CUDA events, off by default)."""
    monkeypatch.setenv("HYBRIDINFER_GPU_KV", "f32")
    monkeypatch.setenv("HYBRIDINFER_GPU_TIMING", "1")


def written_by_gguf(qtype: T) -> bool:
    """Whether gguf-py can encode `qtype` (it has no K-quant encoder: the GPU kernels' tests make those blocks)."""
    try:
        quants.quantize(np.zeros((1, 256), np.float32), qtype)
    except NotImplementedError:
        return False
    return True


@pytest.fixture(scope="module", ids=lambda t: t.name,
                params=[T.F32] + [f.type for f in GPU_NATIVE_FORMATS if f.quantized and written_by_gguf(f.type)])
def relu_model_with_counts(request, tmp_path_factory):
    """A FATReLU model in one weight format, with its activation counts beside it (MODEL.act.gguf)."""
    return write_model_with_counts(tmp_path_factory.mktemp("m"), request.param)


def write_model_with_counts(folder, weight_type):
    weights = random_weights(seed=71, n_layer=N_LAYER, n_ff=N_FF, gate_bias=-8.0)
    path = write_tiny_gguf(folder / "relu.gguf", weights, activation="fatrelu", threshold=0.02,
                           weight_type=weight_type)
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, backend="reference")
    save_profile(profile_activations(engine, [IDS]), folder / "relu.act.gguf")
    return path


def decode_logits(engine, ids=IDS):
    engine.reset()
    return np.stack([engine.feed(ids[: i + 1])[0] for i in range(len(ids))])


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def budgets(path) -> dict[str, int]:
    """Budgets that place nothing, the last layer's attention only, the last layer with some hot neurons (its
    residual stream crosses the boundary), every layer and the output with some hot neurons, everything."""
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, backend="reference")
    m = memory_model(engine.file, engine.config, N_CTX, DEVICE)
    every_layer = m.workspace + sum(m.layer) + m.output
    return {"0": 0, "one-layer": m.workspace + m.layer[-1] + m.neuron[-1] // 2,
            "one-layer-hot": m.workspace + m.layer[-1] + 40 * m.neuron[-1],
            "mid": every_layer + 150 * m.neuron[0], "two-layers": every_layer + 2 * N_FF * m.neuron[0] + 1,
            "all": every_layer + 4 * N_LAYER * N_FF * m.neuron[0]}


def split_file(path, budget: int, group: int = 16):
    """A split solved for `budget` in groups of `group` neurons (the runtime's default, 256, is a whole layer
    of these tiny models), written beside the model."""
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, backend="reference")
    profile = load_profile(str(path.with_name("relu.act.gguf")), engine.fingerprint)
    split = solve_split(engine.config, profile, memory_model(engine.file, engine.config, N_CTX, DEVICE), budget,
                        group)
    out = path.with_name(f"relu.{budget}.split.gguf")
    save_split(split, out)
    return str(out)


def hybrid(path, budget: int, kernels: str = "torch", **options):
    return hybridinfer.load(str(path), n_ctx=N_CTX, split=split_file(path, budget), device=DEVICE,
                            gpu_kernels=kernels, **options)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_hybrid_exact_equals_packed_exact(relu_model_with_counts, kernels):
    """float activations on both sides: the same sums in another order."""
    packed = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, exact=True, float_activations=True,
                              **F32_CACHE)
    expected, expected_batch = decode_logits(packed), packed.logits(IDS)
    for name, budget in budgets(relu_model_with_counts).items():
        engine = hybrid(relu_model_with_counts, budget, kernels, exact=True, float_activations=True, **F32_CACHE)
        side = engine.gpu_side
        assert (side is None) == (name == "0")
        if side is not None:
            assert sorted(side.layers) == ([N_LAYER - 1] if name.startswith("one-layer") else list(range(N_LAYER)))
            assert (side.n_hot == 0) == (name == "one-layer")
            assert (side.n_hot == N_LAYER * N_FF) == (name == "all")
        assert relative_error(decode_logits(engine), expected) < 1e-5, name
        assert relative_error(engine.logits(IDS), expected_batch) < 1e-5, name


F16_KV_BOUND = 2e-3  # relative logit error of a float16 GPU KV cache against float32 caches (measured: docs/hybrid.md)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_float16_gpu_kv_cache_stays_close(relu_model_with_counts, kernels, monkeypatch):
    """CUDA's default cache: keys and values rounded to float16 on the GPU side only, the rest exact."""
    path = relu_model_with_counts
    expected = decode_logits(hybridinfer.load(str(path), n_ctx=N_CTX, exact=True, float_activations=True,
                                              **F32_CACHE))
    monkeypatch.setenv("HYBRIDINFER_GPU_KV", "f16")
    engine = hybrid(path, budgets(path)["mid"], kernels, exact=True, float_activations=True, **F32_CACHE)
    assert all(layer.k_cache.dtype == torch.float16 for layer in engine.gpu_side.layers.values())
    error = relative_error(decode_logits(engine), expected)
    print(f"float16 GPU KV cache, {kernels} kernels: relative logit error {error:.2e}")
    assert 0 < error < F16_KV_BOUND, error


def test_the_cpu_half_is_sent_only_what_it_computes(relu_model_with_counts, monkeypatch):
    """A split layer sends its token down and runs the CPU block only when it keeps cold neurons (a budget holding
    every neuron sends nothing), and the CPU half then gives the packed engine's logits."""
    path = relu_model_with_counts
    calls = {"send": 0, "block": 0}
    send, block = ColdHalf.send, ColdHalf._block

    def counted(name, method):
        def call(self, *args):
            calls[name] += 1
            return method(self, *args)
        return call

    monkeypatch.setattr(ColdHalf, "send", counted("send", send))
    monkeypatch.setattr(ColdHalf, "_block", counted("block", block))
    expected = decode_logits(hybridinfer.load(str(path), n_ctx=N_CTX, exact=True, float_activations=True,
                                              **F32_CACHE))
    for name in ("all", "mid"):
        calls.update(send=0, block=0)
        engine = hybrid(path, budgets(path)[name], exact=True, float_activations=True, **F32_CACHE)
        assert relative_error(decode_logits(engine), expected) < 1e-5, name
        split = next(part for parts in engine.model.layers for part in parts if isinstance(part, SplitFFN))
        cold_layers = sum(neurons.shape[0] > 0 for neurons in split.cold.cold.values())
        assert split.cold.cold and calls["send"] == calls["block"] == cold_layers * len(IDS), (name, calls)
        assert (cold_layers == 0) == (name == "all")


def test_hybrid_int8_cpu_half_stays_close(relu_model_with_counts):
    """Default activations: the CPU half quantizes its inputs to int8 blocks, the GPU side keeps floats."""
    packed = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, exact=True)
    engine = hybrid(relu_model_with_counts, budgets(relu_model_with_counts)["mid"])
    assert 0 < engine.gpu_side.n_hot < N_LAYER * N_FF
    assert relative_error(decode_logits(engine), decode_logits(packed)) < 3e-2


def test_vram_budget_solves_the_split_at_load(relu_model_with_counts):
    """--vram-budget with the activations file beside the model, groups of 256 neurons (a whole tiny layer)."""
    engine = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, vram_budget=str(budgets(relu_model_with_counts)["two-layers"]),
                              device=DEVICE, exact=True)
    assert engine.gpu_side.n_hot == 2 * N_FF
    decode_logits(engine)
    s = engine.gpu_side.stats
    s = engine.gpu_side.stats
    assert s.tokens == len(IDS) and s.gpu_fired > 0 and s.cpu_fired > 0
    assert s.gpu_seconds > 0 and s.cpu_seconds > 0 and s.transfer_seconds > 0


def test_hybrid_with_predictors_drops_what_the_packed_path_drops(relu_model_with_counts):
    """A random predictor drops neurons; the split FFN must drop exactly the same ones on both sides."""

    from hybridinfer.predictors.model import PredictorSet
    gen = torch.Generator().manual_seed(3)
    dense = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, float_activations=True)
    n_embd = dense.config.n_embd
    predictor_set = PredictorSet([torch.randn(32, n_embd, generator=gen) for _ in range(N_LAYER)],
                                 [torch.randn(N_FF, 32, generator=gen) for _ in range(N_LAYER)], [0.5, 0.0, -0.5])
    from hybridinfer.predictors.file import save_predictors
    path = relu_model_with_counts.with_name("random.pred.gguf")
    save_predictors(str(path), predictor_set, dense.fingerprint)
    packed = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, predictors=str(path), float_activations=True,
                              **F32_CACHE)
    expected = decode_logits(packed)
    assert relative_error(expected, decode_logits(dense)) > 1e-3  # the predictor really drops neurons
    engine = hybrid(relu_model_with_counts, budgets(relu_model_with_counts)["mid"], predictors=str(path),
                    float_activations=True, **F32_CACHE)
    assert relative_error(decode_logits(engine), expected) < 1e-5
    assert relative_error(engine.logits(IDS), packed.logits(IDS)) < 1e-5


@pytest.mark.parametrize("n_gpu_layers", [1, N_LAYER, N_LAYER + 1])
def test_gpu_layers_equal_the_dense_packed_engine(relu_model_with_counts, n_gpu_layers):
    packed = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, float_activations=True, **F32_CACHE)
    engine = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, n_gpu_layers=n_gpu_layers, device=DEVICE,
                              gpu_kernels="torch", float_activations=True, **F32_CACHE)
    side = engine.gpu_side
    assert sorted(side.layers) == list(range(N_LAYER - min(n_gpu_layers, N_LAYER), N_LAYER))
    assert all(layer.dense for layer in side.layers.values())
    assert (side.output is not None) == (n_gpu_layers > N_LAYER)
    assert all(layer.attn_qkv is None for i, layer in enumerate(engine.model.weights.layers) if i in side.layers)
    assert relative_error(decode_logits(engine), decode_logits(packed)) < 1e-5
    assert relative_error(engine.logits(IDS), packed.logits(IDS)) < 1e-5


def test_gpu_layers_run_silu_models_too(tmp_path):
    path = write_tiny_gguf(tmp_path / "silu.gguf", random_weights(seed=5, n_layer=2), activation="silu")
    packed = hybridinfer.load(str(path), n_ctx=N_CTX, float_activations=True, **F32_CACHE)
    engine = hybridinfer.load(str(path), n_ctx=N_CTX, n_gpu_layers=1, device=DEVICE, float_activations=True,
                              **F32_CACHE)
    assert relative_error(decode_logits(engine), decode_logits(packed)) < 1e-5
    with pytest.raises(HybridInferError, match="ReLU or FATReLU"):
        hybridinfer.load(str(path), n_ctx=N_CTX, vram_budget="1GiB", activations=str(tmp_path / "none.gguf"))


def test_placement_puts_attention_first_then_the_output_then_neurons(relu_model_with_counts):
    engine = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, backend="reference")
    profile = load_profile(str(relu_model_with_counts.with_name("relu.act.gguf")), engine.fingerprint)
    m = memory_model(engine.file, engine.config, N_CTX, DEVICE)
    for n_layers in range(N_LAYER + 1):
        budget = m.workspace + sum(m.layer[N_LAYER - n_layers:]) + m.neuron[0] * 10
        split = solve_split(engine.config, profile, m, budget, group=1)
        assert split.gpu_layers == list(range(N_LAYER - n_layers, N_LAYER))
        assert not split.output_on_gpu
        assert sum(len(h) for h in split.hot) == (10 if n_layers else 0)
        assert split.fixed_bytes + split.hot_bytes <= budget
    every_layer = m.workspace + sum(m.layer) + m.output
    assert solve_split(engine.config, profile, m, every_layer, group=1).output_on_gpu
    dense = [m.layer[i] + m.dense_ffn[i] for i in range(N_LAYER)]
    assert gpu_layers_for(m, m.workspace + dense[-1]) == 1
    assert gpu_layers_for(m, m.workspace + sum(dense)) == N_LAYER
    assert gpu_layers_for(m, m.workspace + sum(dense) + m.output) == N_LAYER + 1
    assert sum(len(h) for h in solve_split(engine.config, profile, m, every_layer, group=1).hot) == 0


def test_split_file_round_trip_and_refusals(relu_model_with_counts, tmp_path):
    engine = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, backend="reference")
    profile = load_profile(str(relu_model_with_counts.with_name("relu.act.gguf")), engine.fingerprint)
    m = memory_model(engine.file, engine.config, N_CTX, DEVICE)
    split = solve_split(engine.config, profile, m, budgets(relu_model_with_counts)["one-layer-hot"], group=1)
    save_split(split, tmp_path / "s.gguf")
    loaded = load_split(tmp_path / "s.gguf", engine.fingerprint)
    assert [h.tolist() for h in loaded.hot] == [h.tolist() for h in split.hot]
    assert loaded.gpu_layers == split.gpu_layers == [N_LAYER - 1] and not loaded.output_on_gpu
    from_file = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, split=str(tmp_path / "s.gguf"), device=DEVICE)
    assert sorted(from_file.gpu_side.layers) == [N_LAYER - 1] and from_file.gpu_side.n_hot == len(split.hot[-1])
    with pytest.raises(HybridInferError, match="budget"):
        hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, split=str(tmp_path / "s.gguf"), vram_budget="1000")
    with pytest.raises(HybridInferError, match="context"):
        hybridinfer.load(str(relu_model_with_counts), n_ctx=2 * N_CTX, split=str(tmp_path / "s.gguf"), device=DEVICE)
    other = write_tiny_gguf(tmp_path / "other.gguf", random_weights(seed=72, n_layer=N_LAYER, n_ff=N_FF),
                            activation="relu")
    with pytest.raises(HybridInferError, match="another model"):
        hybridinfer.load(str(other), n_ctx=N_CTX, split=str(tmp_path / "s.gguf"))
    with pytest.raises(HybridInferError, match="activation counts"):
        hybridinfer.load(str(other), vram_budget="1GiB")
    with pytest.raises(HybridInferError, match="exclude each other"):
        hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, vram_budget="1GiB", n_gpu_layers=1)
    with pytest.raises(HybridInferError, match="packed backend"):
        hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, n_gpu_layers=1, backend="reference")


def test_generate_cli_reports_both_sides(relu_model_with_counts):
    args = ["generate", "-m", str(relu_model_with_counts), "-p", "the world", "-n", "6", "--temp", "0", "-c", str(N_CTX),
            "--device", DEVICE]
    hybrid_args = args + ["--vram-budget", str(budgets(relu_model_with_counts)["two-layers"])]
    result = CliRunner().invoke(cli, hybrid_args + ["--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["hybrid"]
    assert report["gpu_ffn_share"] + report["cpu_ffn_share"] == pytest.approx(1.0)
    assert 0 < report["gpu_ffn_share"] < 1 and report["gpu_layers"] == N_LAYER
    assert report["cpu_ms_per_token"] > 0 and report["gpu_ms_per_token"] > 0
    text = CliRunner().invoke(cli, hybrid_args)
    assert "CPU/GPU" in text.stderr and "transfers" in text.stderr
    ngl = CliRunner().invoke(cli, args + ["-ngl", "2", "--json"])
    assert ngl.exit_code == 0, ngl.output
    assert json.loads(ngl.stdout)["hybrid"]["dense_gpu_layers"] == 2


def test_perplexity_of_a_hybrid_run_compares_with_the_dense_model(relu_model_with_counts):
    from hybridinfer.eval.perplexity import perplexity

    from hybridinfer.predictors.file import save_predictors
    from hybridinfer.predictors.model import PredictorSet
    dense = hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, float_activations=True)
    gen = torch.Generator().manual_seed(9)
    predictor_set = PredictorSet([torch.randn(32, dense.config.n_embd, generator=gen) for _ in range(N_LAYER)],
                                 [torch.randn(N_FF, 32, generator=gen) for _ in range(N_LAYER)], [0.3] * N_LAYER)
    path = relu_model_with_counts.with_name("ppl.pred.gguf")
    save_predictors(str(path), predictor_set, dense.fingerprint)
    text = "the world is a hello and it is the world of a hello " * 8
    # the split FFN reads the transposed down projection, as --exact does (re-quantized for quantized files)
    expected = perplexity(hybridinfer.load(str(relu_model_with_counts), n_ctx=N_CTX, exact=True, float_activations=True), text,
                          n_chunk=32)
    engine = hybrid(relu_model_with_counts, budgets(relu_model_with_counts)["mid"], predictors=str(path),
                    float_activations=True, **F32_CACHE)
    result = perplexity(engine, text, n_chunk=32)
    assert result.dense_perplexity == pytest.approx(expected.perplexity, rel=1e-4)
    assert result.kl_to_dense > 0
    assert all(part.predicting for parts in engine.model.layers for part in parts if isinstance(part, SplitFFN))
