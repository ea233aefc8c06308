"""The reference forward pass against an independent implementation: transformers' LlamaForCausalLM
loading the same GGUF file (it dequantizes with `gguf` and undoes the Q/K permutation itself)."""

import numpy as np
import pytest
import torch

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.weight_formats import FORMATS
from hybridinfer.reference.model import Transformer
from hybridinfer.reference.weights import load_weights
from tiny_models import random_weights, write_tiny_gguf

transformers = pytest.importorskip("transformers")


def ours(path, n_ctx=64) -> Transformer:
    model = GGUFFile(path)
    config = ModelConfig.from_gguf(model)
    return Transformer(config, load_weights(model, config), n_ctx)


class FATReLU(torch.nn.Module):
    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, v):
        return torch.where(v >= self.threshold, v, torch.zeros_like(v))


def reference(path, activation=None, threshold=0.0):
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if activation is not None:  # transformers' llama always builds SiLU from a GGUF; swap in the activation
        for layer in hf.model.layers:
            layer.mlp.act_fn = FATReLU(threshold)
    return hf.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def tokens(n=12, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(3, 270, n))


@pytest.mark.parametrize("weight_type", tuple(FORMATS), ids=lambda t: t.name)
def test_logits_match_transformers_for_each_weight_type(tmp_path, weight_type):
    width = 256 if FORMATS[weight_type].k_quant else 64  # K-quant rows are whole 256-element super-blocks
    weights = random_weights(seed=int(weight_type), n_embd=width, n_ff=256 if width == 256 else 96)
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, weight_type=weight_type)
    ids = tokens(seed=int(weight_type))
    with torch.no_grad():
        expected = reference(path)(ids[None]).logits[0]
    assert relative_error(ours(path).forward(ids, 0), expected) < 1e-4


@pytest.mark.parametrize("activation,threshold", [("relu", 0.0), ("fatrelu", 0.05)])
def test_sparse_activations_match_transformers(tmp_path, activation, threshold):
    weights = random_weights(seed=7, tied=True)
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, activation=activation, threshold=threshold)
    model = ours(path)
    assert model.config.activation == activation and model.config.tied_embeddings
    assert model.config.activation_threshold == pytest.approx(threshold)
    ids = tokens(seed=8)
    with torch.no_grad():
        expected = reference(path, activation, threshold)(ids[None]).logits[0]
        silu = reference(path)(ids[None]).logits[0]
    got = model.forward(ids, 0)
    assert relative_error(got, expected) < 1e-4
    assert relative_error(got, silu) > 1e-2  # the activation really changed the result


def test_kv_cached_decoding_equals_uncached(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", random_weights(seed=11, n_head_kv=1), n_head_kv=1)
    ids = tokens(20, seed=12)
    full = ours(path).forward(ids, 0)
    model = ours(path)
    prefix = model.forward(ids[:7], 0)
    steps = [model.forward(ids[i:i + 1], i) for i in range(7, 20)]
    assert relative_error(torch.cat([prefix] + steps), full) < 1e-5


def test_powerinfer_transposed_down_projection_gives_same_logits(tmp_path):
    weights = random_weights(seed=5)
    plain = write_tiny_gguf(tmp_path / "a.gguf", weights, activation="relu")
    powerinfer = write_tiny_gguf(tmp_path / "b.gguf", weights, powerinfer=True)
    ids = tokens(seed=6)
    assert relative_error(ours(powerinfer).forward(ids, 0), ours(plain).forward(ids, 0)) < 1e-6


def test_minicpm_scalings(tmp_path):
    """MiniCPM = llama with scaled embeddings, scaled block outputs and logits divided by logit_scale."""
    weights = random_weights(seed=9, tied=True)
    scales = {"minicpm.embedding_scale": 12.0, "minicpm.residual_scale": 0.5, "minicpm.logit_scale": 6.0}
    path = write_tiny_gguf(tmp_path / "m.gguf", weights, arch="minicpm", extra=scales)
    model = ours(path)
    c = model.config
    assert (c.embedding_scale, c.residual_scale, c.logit_scale) == (12.0, 0.5, 6.0)
    ids = tokens(seed=10)
    x = model.weights.token_embd[ids] * 12.0
    from hybridinfer.reference.model import rms_norm
    for index, layer in enumerate(model.weights.layers):
        x = x + 0.5 * model.attention(index, layer, rms_norm(x, layer.attn_norm, c.rms_eps), 0)
        x = x + 0.5 * model.ffn_block(index, layer, x)
    expected = rms_norm(x, model.weights.output_norm, c.rms_eps) @ model.weights.output.T / 6.0
    assert relative_error(ours(path).forward(ids, 0), expected) < 1e-6
