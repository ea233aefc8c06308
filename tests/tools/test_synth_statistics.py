"""sparsity_profile="prosparse" of tools/synth_checkpoint.py: ProSparse-like FFN activation statistics.

Measured the way a benchmark sees them: synthesize (small), convert to GGUF, run the engine on real text (the
built-in corpus) and watch every layer's FATReLU output through `model.observers`. Checked: ~89% sparsity
in every layer, hot and cold neurons (skewed firing frequencies that follow the seeded targets), gate
pre-activations predictable from the residual stream at low rank, and a calibration that runs the model the
way transformers does (same firing rates on the calibration sample as the oracle sees)."""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
from safetensors import safe_open

import hybridinfer
from hf_reference import build_reference_model, load_hf_state_dict
from test_predictors_support import one_thread  # noqa: F401 (an autouse fixture: tiny matmuls on one thread)
from hybridinfer.text.calibration import calibration_texts, token_chunks
from hybridinfer.convert import convert_checkpoint
from tools import synth_checkpoint as synth
from tools import synth_profile, synth_tensors
from tools.synth_checkpoint import synthesize

PROFILE = {"sparsity_profile": "prosparse"}
LAYERS = 8  # small shapes, twice the small size's depth: the sparsity must not fade with depth
THRESHOLD = 0.01  # FATReLU of prosparse-llama-2-7b
N_FF, HIDDEN, RANK = 688, 256, 16  # small shapes; default_gate_rank(256) = 16




def load_engine(path):
    """The plain torch float32 forward where the engine offers a choice: the statistics are the model's,
    not the kernels'."""
    if "backend" in inspect.signature(hybridinfer.Engine).parameters:
        return hybridinfer.load(str(path), n_ctx=256, backend="reference")
    return hybridinfer.load(str(path), n_ctx=256)


@functools.lru_cache(maxsize=1)
def corpus_test_split() -> tuple[str, ...]:
    """The built-in corpus's test split (building it takes seconds: once per session)."""
    return tuple(calibration_texts(None, "test"))


def observe_text(hf_dir, gguf_path, n_tokens=1024, chunk_len=128):
    """Per layer: residuals (T, d) and FATReLU outputs (T, n_ff) of the engine on ~n_tokens of corpus text
    (chunks of chunk_len tokens, each from an empty cache and starting with BOS)."""
    convert_checkpoint(hf_dir, gguf_path, outtype="f32")
    engine = load_engine(gguf_path)
    residuals, activations = {}, {}

    def observe(layer, residual, activation):
        residuals.setdefault(layer, []).append(residual.clone())
        activations.setdefault(layer, []).append(activation.clone())

    engine.model.observers.append(observe)
    for chunk in token_chunks(engine.tokenizer, list(corpus_test_split()), n_tokens, chunk_len):
        engine.logits(chunk)
    return ({k: torch.cat(v) for k, v in residuals.items()}, {k: torch.cat(v) for k, v in activations.items()})


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiled")
    hf_dir = synthesize(root / "hf", "prosparse-llama-2-7b", size="small",
                        overrides={**PROFILE, "num_hidden_layers": LAYERS}, progress=False)
    residuals, activations = observe_text(hf_dir, root / "m.gguf")
    return hf_dir, residuals, activations


def test_sparsity_is_prosparse_like_in_every_layer(profiled):
    _, _, activations = profiled
    per_layer = np.array([float((a == 0).float().mean()) for _, a in sorted(activations.items())])
    assert len(per_layer) == LAYERS
    assert 0.86 <= per_layer.mean() <= 0.92, per_layer
    assert np.abs(per_layer - per_layer.mean()).max() <= 0.03, per_layer  # no fading with depth


def test_hot_and_cold_neurons_follow_the_targets(profiled):
    from scipy.stats import spearmanr
    _, _, activations = profiled
    profile = synth_profile.SparsityProfile(RANK)
    for layer, a in sorted(activations.items()):
        frequency = (a != 0).double().mean(0).numpy()  # (n_ff,)
        ordered = np.sort(frequency)[::-1]
        assert ordered[: N_FF // 5].sum() >= 0.5 * ordered.sum(), layer  # top 20% carry most activations
        assert (frequency < 0.02).mean() > 0.2, layer  # many cold neurons
        target = profile.firing_rates(layer, N_FF, seed=0)
        assert spearmanr(frequency, target)[0] > 0.8, layer  # the seeded targets carry over to text


def _ffn_pre_activations(state, layer, residual):
    w = state[f"model.layers.{layer}.post_attention_layernorm.weight"]
    x = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * w
    return x @ state[f"model.layers.{layer}.mlp.gate_proj.weight"].T


def low_rank_fit(residual, pre, rank):
    """Held-out R^2 of a rank-`rank` linear map from the rms-normalized residual to the gate pre-activations
    (ridge regression on the first 3/4 of the tokens, truncated to the fit's top `rank` output directions),
    and the recall of the active neurons it predicts (pre-activation >= threshold)."""
    x = (residual / residual.pow(2).mean(-1, keepdim=True).sqrt()).double()
    y = pre.double()
    n_fit = x.shape[0] * 3 // 4
    xf, yf, xt, yt = x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]
    w = torch.linalg.solve(xf.T @ xf + 1e-3 * n_fit * torch.eye(x.shape[1], dtype=torch.float64), xf.T @ yf)
    _, _, vh = torch.linalg.svd(xf @ w, full_matrices=False)
    predicted = xt @ (w @ vh[:rank].T @ vh[:rank])
    r2 = 1 - float((predicted - yt).pow(2).sum() / (yt - yt.mean(0)).pow(2).sum())
    active = yt >= THRESHOLD
    recall = float((active & (predicted >= THRESHOLD)).sum() / active.sum())
    return r2, recall


def test_gate_is_low_rank_plus_a_little_noise(profiled):
    hf_dir, _, _ = profiled
    state = load_hf_state_dict(hf_dir)
    for layer in range(LAYERS):
        gate = state[f"model.layers.{layer}.mlp.gate_proj.weight"]
        s = torch.linalg.svdvals(gate[:, 1:].double())  # column 0 is the bias channel's coefficient
        energy = float(s[:RANK].pow(2).sum() / s.pow(2).sum())
        assert 0.9 <= energy <= 0.95 and s[RANK - 1] > 4 * s[RANK]
        row_norm = gate[:, 1:].norm(dim=1)
        std = synth_tensors.default_weight_std(HIDDEN, "small")
        assert torch.allclose(row_norm, torch.full_like(row_norm, std * HIDDEN ** 0.5), rtol=0.15)


def test_a_low_rank_predictor_sees_the_active_neurons(profiled, tmp_path):
    """Rank 2 R (+ the bias channel) explains the gate pre-activations of real text; the same fit on a
    default-weights checkpoint (full-rank gate) does not, so the test can fail."""
    hf_dir, residuals, activations = profiled
    state = load_hf_state_dict(hf_dir)
    for layer in range(LAYERS):
        pre = _ffn_pre_activations(state, layer, residuals[layer])
        clear = (pre - THRESHOLD).abs() > 1e-4  # away from the threshold, where float32 rounding could decide
        assert torch.equal((pre >= THRESHOLD)[clear], (activations[layer] != 0)[clear])  # the engine ran these weights
        assert clear.float().mean() > 0.99
        r2, recall = low_rank_fit(residuals[layer], pre, 2 * RANK)
        assert r2 > 0.9 and recall > 0.8, (layer, r2, recall)

    plain = synthesize(tmp_path / "hf", "prosparse-llama-2-7b", size="small", overrides={"gate_bias": -1.2},
                       progress=False)
    plain_residuals, _ = observe_text(plain, tmp_path / "m.gguf")
    plain_state = load_hf_state_dict(plain)
    pre = _ffn_pre_activations(plain_state, 3, plain_residuals[3])
    assert low_rank_fit(plain_residuals[3], pre, 2 * RANK)[0] < 0.7


@pytest.mark.parametrize("variant,size", [("prosparse-llama-2-7b", "small"), ("minicpm-1b", "tiny")])
def test_calibration_runs_the_model_like_transformers(tmp_path, variant, size):
    """On the calibration sample itself, transformers' LLaMA (MiniCPM: scales folded in, grouped KV heads)
    fires each neuron as often as its target: the calibration pass computed the same forward."""
    hf_dir = synthesize(tmp_path / "hf", variant, size=size, overrides=PROFILE, progress=False)
    config = synth.build_config(variant, size)
    ids = synth_profile.calibration_tokens(config, 0, synth.TOKENIZER_VOCAB[size])
    model = build_reference_model(hf_dir)
    fired = []  # per layer: how many non-BOS tokens fire each neuron (BOS is left out of the calibration)
    for layer in model.model.layers:
        layer.mlp.act_fn.register_forward_hook(lambda m, i, o: fired.append((o[:, 1:] != 0).sum((0, 1))))
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids), use_cache=False)
    profile = synth_profile.SparsityProfile(synth_profile.default_gate_rank(config["hidden_size"]))
    n_tokens = ids[:, 1:].size
    assert len(fired) == config["num_hidden_layers"]
    for layer, count in enumerate(fired):
        target = np.rint(profile.firing_rates(layer, config["intermediate_size"], seed=0) * n_tokens)
        miss = np.abs(count.numpy() - target)
        assert np.mean(miss == 0) > 0.7 and miss.max() <= 3, layer  # misses: column rounding (bf16), float order
        assert abs(count.sum().item() - target.sum()) < 0.002 * target.size * n_tokens, layer


def test_same_seed_same_bytes_and_chunking_does_not_matter(tmp_path, monkeypatch):
    first = synthesize(tmp_path / "a", "prosparse-llama-2-7b", size="small", overrides=PROFILE, progress=False)
    again = synthesize(tmp_path / "b", "prosparse-llama-2-7b", size="small", overrides=PROFILE, progress=False)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in files)
    monkeypatch.setattr(synth_tensors, "_CHUNK_ELEMENTS", 10_000)  # many row chunks per gate_proj
    rechunked = synthesize(tmp_path / "c", "prosparse-llama-2-7b", size="small", overrides=PROFILE,
                           progress=False)
    a, c = load_hf_state_dict(first), load_hf_state_dict(rechunked)
    assert all(torch.equal(a[k], c[k]) for k in a)
    other = synthesize(tmp_path / "d", "prosparse-llama-2-7b", size="small", seed=1, overrides=PROFILE,
                       progress=False)
    assert not torch.equal(load_hf_state_dict(other)["model.layers.0.mlp.gate_proj.weight"],
                           a["model.layers.0.mlp.gate_proj.weight"])


def test_profile_touches_only_embeddings_gate_and_bias_rows(tmp_path):
    plain = load_hf_state_dict(synthesize(tmp_path / "plain", "prosparse-llama-2-7b", progress=False))
    profiled = load_hf_state_dict(synthesize(tmp_path / "prof", "prosparse-llama-2-7b", overrides=PROFILE,
                                             progress=False))
    for name, tensor in plain.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            assert torch.equal(profiled[name][1:], tensor[1:]) and not profiled[name][0].any()
        elif name == "model.embed_tokens.weight":
            scale = synth_tensors.default_weight_std(64, "tiny") * 64  # std^2 d per entry instead of std
            assert torch.allclose(profiled[name][:, 1:], tensor[:, 1:] * scale, rtol=1e-6)
            assert profiled[name][:, 0].unique().numel() == 1
        elif not name.endswith("gate_proj.weight"):
            assert torch.equal(profiled[name], tensor), name
    as_bin = synthesize(tmp_path / "bin", "prosparse-llama-2-7b", fmt="bin", overrides=PROFILE, progress=False)
    assert all(torch.equal(t, profiled[k]) for k, t in load_hf_state_dict(as_bin).items())


def test_cli_flag_and_errors(tmp_path):
    synth.main([str(tmp_path / "cli"), "--variant", "prosparse-llama-2-7b", "--prosparse-statistics", "--quiet"])
    direct = synthesize(tmp_path / "api", "prosparse-llama-2-7b", overrides=PROFILE, progress=False)
    name = "model-00002-of-00006.safetensors"
    assert (tmp_path / "cli" / name).read_bytes() == (direct / name).read_bytes()
    with safe_open(direct / name, "pt") as f:
        assert "sparsity_profile" not in (f.metadata() or {})
    assert "sparsity_profile" not in (direct / "config.json").read_text()
    with pytest.raises(ValueError, match="ReLU or FATReLU"):
        synthesize(tmp_path / "silu", "llama-silu", overrides=PROFILE, progress=False)
    with pytest.raises(ValueError, match="gate_bias"):
        synthesize(tmp_path / "both", "relullama-7b", overrides={**PROFILE, "gate_bias": -1.2}, progress=False)
    with pytest.raises(ValueError, match="sparsity_profile must be"):
        synthesize(tmp_path / "bad", "relullama-7b", overrides={"sparsity_profile": "dense"}, progress=False)
    with pytest.raises(ValueError, match="gate_rank"):
        synthesize(tmp_path / "rank", "relullama-7b", overrides={**PROFILE, "gate_rank": 64}, progress=False)


def test_gate_noise_needs_the_profile_and_a_share_below_one(tmp_path):
    with pytest.raises(ValueError, match="gate_noise"):
        synthesize(tmp_path / "a", "prosparse-llama-2-7b", size="tiny", overrides={"gate_noise": 0.02},
                   progress=False)
    with pytest.raises(ValueError, match="gate_noise"):
        synthesize(tmp_path / "b", "prosparse-llama-2-7b", size="tiny",
                   overrides={"sparsity_profile": "prosparse", "gate_noise": 1.5}, progress=False)
