"""The decode step captured and replayed (`hybrid/decode_graphs.py`, `gpu/graphs.py`): on the CPU device the
recorded twin of a CUDA graph replays the Triton launches (interpreted) and torch kernels with the arguments of its
capture, so a replayed token computes what an eager one does only where the captured work keeps a graph's rules
(numbers fixed, the position on the device, transfers through fixed buffers); with HYBRIDINFER_TEST_DEVICE=cuda
(`make gpu-check`) the graphs are CUDA's. Each layout decodes the same tokens with graphs and eagerly; the logits
must agree (exactly on the CPU device)."""

import os

import numpy as np
import pytest
import torch

import hybridinfer
from hybridinfer.errors import HybridInferError
from hybridinfer.gpu.graphs import RecordedGraph
from hybridinfer.hybrid import decode_graphs
from hybridinfer.hybrid.gpu_parts import GPUAttention
from hybridinfer.hybrid.split_ffn import ColdHalf
from test_gpu_launches import IDS, N_CTX, N_LAYER, split_model  # noqa: F401 (a fixture)

DEVICE = os.environ.get("HYBRIDINFER_TEST_DEVICE", "cpu")
CONTINUATION = [33, 7, 250, 91, 12, 64]  # decoded one at a time after IDS


def test_recorded_graph_replays_kernels_on_the_tensors_as_they_are_now():
    gen = torch.Generator().manual_seed(11)
    a, b = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    out = torch.zeros(8)
    step = 3  # a number: kept as captured

    def work():
        total = a * 2 + b  # made during the capture: the replay writes the same tensor
        out.add_(total, alpha=step)

    graph = RecordedGraph()
    graph.capture(work)
    np.testing.assert_allclose(out, 3 * (2 * a + b), rtol=1e-6)
    a.copy_(torch.randn(8, generator=gen))
    step = 5
    out.zero_()
    graph.replay()
    np.testing.assert_allclose(out, 3 * (2 * a + b), rtol=1e-6)


def test_recorded_graph_replays_triton_launches():
    pytest.importorskip("triton", reason="the launches replayed are Triton kernels")
    from hybridinfer.gpu import norm_kernels

    gen = torch.Generator().manual_seed(12)
    x, weight = torch.randn(1, 64, generator=gen), torch.rand(64, generator=gen) + 0.5
    held = {}
    graph = RecordedGraph()
    graph.capture(lambda: held.update(out=norm_kernels.rms_norm(x, weight, 1e-6)))
    x.copy_(torch.randn(1, 64, generator=gen))
    graph.replay()
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight
    np.testing.assert_allclose(held["out"], expected, rtol=1e-5, atol=1e-6)


def test_recorded_graph_refuses_a_host_read():
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="read a device value on the host"):
        RecordedGraph().capture(lambda: int(x.sum()))


def _decode(engine) -> list[np.ndarray]:
    """The logits of IDS' last position, then of each token of CONTINUATION decoded one at a time; then a second
    sequence from an empty cache (the device position written again), two tokens."""
    engine.reset()
    rows = [engine.feed(IDS)[0]]
    for t in range(len(CONTINUATION)):
        rows.append(engine.feed(IDS + CONTINUATION[:t + 1])[0])
    engine.reset()
    rows.append(engine.feed(CONTINUATION[:3])[0])
    rows.append(engine.feed(CONTINUATION[:4])[0])
    return rows


def _load(path, monkeypatch, graphs: bool, **options):
    monkeypatch.setenv(decode_graphs.ENV_VAR, "1" if graphs else "0")
    return hybridinfer.load(str(path), n_ctx=N_CTX, device=DEVICE, gpu_kernels="triton", **options)


def _assert_graphs_match_eager(path, monkeypatch, **options) -> object:
    pytest.importorskip("triton", reason="the decode step is captured with the Triton kernels")
    eager = _load(path, monkeypatch, False, **options)
    assert eager.model.graphed is None
    expected = _decode(eager)
    graphed = _load(path, monkeypatch, True, **options)
    got = _decode(graphed)
    runner = graphed.model.graphed
    assert runner is not None and runner.tokens == len(CONTINUATION) + 1  # the first one eager, then captured
    assert all(segment.graph is not None for segment in runner.segments)
    for t, (want, have) in enumerate(zip(expected, got)):  # the same kernels on the same inputs: the same bits here
        if DEVICE == "cuda":
            np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-6, err_msg=f"logits of decoded row {t}")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"logits of decoded row {t}")
    assert graphed.gpu_side.stats.gpu_fired == eager.gpu_side.stats.gpu_fired
    assert graphed.gpu_side.stats.cpu_fired == eager.gpu_side.stats.cpu_fired
    return graphed


def test_split_layers_replayed_match_eager(split_model, monkeypatch):  # noqa: F811
    path, split, predictors = split_model
    engine = _assert_graphs_match_eager(path, monkeypatch, split=split, predictors=predictors)
    assert engine.gpu_side.n_hot > 0 and engine.gpu_side.stats.cpu_fired > 0  # both halves of the split ran
    # per split layer with cold neurons: before the copy down, the hot half, the add (and the next layer's start)
    assert len(engine.model.graphed.segments) == 2 * N_LAYER + 1


def test_layers_with_every_neuron_on_the_gpu_replayed_match_eager(split_model, monkeypatch):  # noqa: F811
    path, _, predictors = split_model
    engine = _assert_graphs_match_eager(path, monkeypatch, vram_budget="1GiB", predictors=predictors,
                                        activations=str(path).replace(".gguf", ".act.gguf"))
    assert engine.gpu_side.stats.cpu_fired == 0 and len(engine.model.graphed.segments) == 1


def test_dense_layer_then_cpu_layer_replayed_match_eager(split_model, monkeypatch):  # noqa: F811
    path, _, _ = split_model
    engine = _assert_graphs_match_eager(path, monkeypatch, n_gpu_layers=1)
    assert engine.gpu_side.output is None  # the boundary back to the CPU, its layer and output project there


def test_post_norm_model_replayed_matches_eager(tmp_path, monkeypatch):
    from tiny_architectures import SHAPES, write_arch_gguf

    path = write_arch_gguf(tmp_path / "gemma3.gguf", "gemma3")
    _assert_graphs_match_eager(path, monkeypatch, n_gpu_layers=SHAPES["gemma3"][0] + 1)


class _RefusedCapture:
    """A CUDA capture that fails (as an operation CUDA cannot capture makes it): nothing of the work runs."""

    cuda = True

    def new(self):
        return self

    def capture(self, work):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_failed_capture_decodes_eagerly_and_says_so(split_model, monkeypatch, capsys):  # noqa: F811
    pytest.importorskip("triton", reason="the decode step is captured with the Triton kernels")
    path, split, predictors = split_model
    expected = _decode(_load(path, monkeypatch, False, split=split, predictors=predictors))
    engine = _load(path, monkeypatch, True, split=split, predictors=predictors)
    engine.model.graphed.graphs = _RefusedCapture()
    for t, (want, have) in enumerate(zip(expected, _decode(engine))):
        np.testing.assert_array_equal(have, want, err_msg=f"logits of decoded row {t}")
    runner = engine.model.graphed
    assert runner.failed == "operation not permitted when stream is capturing"
    assert all(segment.graph is None for segment in runner.segments)
    assert capsys.readouterr().err.count("decoding without them") == 1


def test_a_replayed_token_runs_none_of_the_parts_python(split_model, monkeypatch):  # noqa: F811
    pytest.importorskip("triton", reason="the decode step is captured with the Triton kernels")
    from hybridinfer.gpu import triton_kernels

    path, split, predictors = split_model
    engine = _load(path, monkeypatch, True, split=split, predictors=predictors)
    engine.feed(IDS)
    engine.feed(IDS + CONTINUATION[:1])  # eager
    engine.feed(IDS + CONTINUATION[:2])  # captured
    calls = []
    spied = [(GPUAttention, "__call__"), (triton_kernels, "hot_ffn"), (ColdHalf, "run")]
    for owner, name in spied:
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *args, _name=name, _original=original, **kwargs:
                            calls.append(_name) or _original(*args, **kwargs))
    engine.feed(IDS + CONTINUATION[:3])  # replayed: only the host's steps run
    assert calls == ["run"] * N_LAYER
    calls.clear()
    with engine.every_neuron():  # the dense twin runs eagerly: the spies see it
        engine.feed(IDS + CONTINUATION[:4])
    assert calls.count("__call__") == N_LAYER and calls.count("hot_ffn") == N_LAYER


def test_graphs_setting_is_checked(split_model, monkeypatch):  # noqa: F811
    path, split, predictors = split_model
    monkeypatch.setenv(decode_graphs.ENV_VAR, "yes")
    with pytest.raises(HybridInferError, match="set it to 1"):
        hybridinfer.load(str(path), n_ctx=N_CTX, device="cpu", gpu_kernels="torch", split=split)
    monkeypatch.setenv(decode_graphs.ENV_VAR, "1")
    with pytest.raises(HybridInferError, match="needs the Triton kernels"):
        hybridinfer.load(str(path), n_ctx=N_CTX, device="cpu", gpu_kernels="torch", split=split)
