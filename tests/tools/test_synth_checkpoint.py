"""tools/synth_checkpoint.py writes checkpoints shaped like the published ones; tests/hf_reference.py reads them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open

from hf_reference import hf_reference_logits, load_hf_state_dict
from tools import synth_checkpoint as synth
from tools import synth_tensors
from tools.synth_checkpoint import VARIANTS, synthesize

LLAMA_KEYS = {"architectures", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
              "intermediate_size", "max_position_embeddings", "model_type", "num_attention_heads",
              "num_hidden_layers", "num_key_value_heads", "pretraining_tp", "rms_norm_eps", "rope_scaling",
              "tie_word_embeddings", "torch_dtype", "transformers_version", "use_cache", "vocab_size"}
EXPECTED_KEYS = {
    "prosparse-llama-2-7b": LLAMA_KEYS | {"hidden_act_param", "auto_map"},
    "prosparse-llama-2-13b": LLAMA_KEYS | {"hidden_act_param", "auto_map"},
    "relullama-7b": LLAMA_KEYS,
    "llama-silu": LLAMA_KEYS,
    "minicpm-1b": (LLAMA_KEYS - {"model_type", "pretraining_tp"})
    | {"hidden_act_param", "auto_map", "scale_emb", "dim_model_base", "scale_depth"},
}
# variant -> (weight file pattern, shard count at tiny size, stored torch dtype)
EXPECTED_FILES = {
    "prosparse-llama-2-7b": (r"model-\d{5}-of-00006\.safetensors", 6, torch.float32),
    "prosparse-llama-2-13b": (r"model-\d{5}-of-00011\.safetensors", 11, torch.float32),
    "relullama-7b": (r"pytorch_model-\d{5}-of-00003\.bin", 3, torch.float32),
    "llama-silu": (r"model-\d{5}-of-00002\.safetensors", 2, torch.float16),
    "minicpm-1b": (r"pytorch_model\.bin", 1, torch.bfloat16),
}
TOKENS = [1, 450, 7, 99, 300, 12, 599, 3]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {v: synthesize(root / v, v, size="tiny", progress=False) for v in VARIANTS}


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    return torch.load(path, map_location="cpu", weights_only=True)


def expected_tensor_names(config: dict) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(config["num_hidden_layers"]):
        names |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        names |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        names |= {f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
    return names


@pytest.mark.parametrize("variant", VARIANTS)
def test_files_index_and_dtypes(tiny_dirs, variant):
    hf_dir = tiny_dirs[variant]
    pattern, n_shards, dtype = EXPECTED_FILES[variant]
    weight_files = sorted(p for p in hf_dir.iterdir() if re.fullmatch(pattern, p.name))
    assert len(weight_files) == n_shards
    assert {"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json"} <= {p.name for p in hf_dir.iterdir()}
    assert not list(hf_dir.glob("*.tmp"))
    config = json.loads((hf_dir / "config.json").read_text())
    tensors = {}
    for path in weight_files:
        part = read_weight_file(path)
        assert all(t.dtype == dtype for t in part.values()), path
        tensors.update({k: (path.name, t) for k, t in part.items()})
    assert set(tensors) == expected_tensor_names(config)
    index_files = list(hf_dir.glob("*.index.json"))
    if n_shards == 1:
        assert not index_files
        return
    index = json.loads(index_files[0].read_text())
    assert index_files[0].name == ("model.safetensors.index.json" if weight_files[0].suffix == ".safetensors"
                                   else "pytorch_model.bin.index.json")
    assert index["weight_map"] == {k: file for k, (file, _) in tensors.items()}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for _, t in tensors.values())
    d, kv_heads, heads = config["hidden_size"], config["num_key_value_heads"], config["num_attention_heads"]
    assert tensors["model.layers.0.self_attn.k_proj.weight"][1].shape == (d // heads * kv_heads, d)
    assert tensors["model.layers.0.mlp.down_proj.weight"][1].shape == (d, config["intermediate_size"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_as_published(tiny_dirs, variant):
    config = json.loads((tiny_dirs[variant] / "config.json").read_text())
    assert set(config) == EXPECTED_KEYS[variant]
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2 and config["rms_norm_eps"] == 1e-5
    assert "rope_theta" not in config
    assert config["vocab_size"] == 600
    if variant.startswith("prosparse"):
        assert config["architectures"] == ["SparseLlamaForCausalLM"] and config["model_type"] == "sparsellama"
        assert (config["hidden_act"], config["hidden_act_param"]) == ("fatrelu", 0.01)
        assert config["torch_dtype"] == "bfloat16" and config["max_position_embeddings"] == 4096
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sparsellama.SparseLlamaForCausalLM"
    elif variant == "minicpm-1b":
        assert config["architectures"] == ["MiniCPMForCausalLM"] and config["tie_word_embeddings"] is True
        assert (config["hidden_act"], config["hidden_act_param"]) == ("fatrelu", 0.03)
        assert (config["scale_emb"], config["dim_model_base"], config["scale_depth"]) == (12, 256, 1.4)
        assert config["num_key_value_heads"] < config["num_attention_heads"]
        assert config["auto_map"]["AutoConfig"] == "configuration_minicpm.MiniCPMConfig"
    else:
        assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
        assert config["hidden_act"] == {"relullama-7b": "relu", "llama-silu": "silu"}[variant]
    tokenizer_config = json.loads((tiny_dirs[variant] / "tokenizer_config.json").read_text())
    assert tokenizer_config["add_bos_token"] is True and tokenizer_config["add_eos_token"] is False
    assert ("chat_template" in tokenizer_config) == (variant == "minicpm-1b")


def test_full_size_configs_and_shard_plans():
    """Published shapes, file counts and sizes, without writing any weights."""
    expected = {"prosparse-llama-2-7b": (4096, 32, 32, 11008, 32000, 6, 26.95e9),
                "prosparse-llama-2-13b": (5120, 40, 40, 13824, 32000, 11, 52.06e9),
                "minicpm-1b": (1536, 52, 24, 3840, 73440, 1, 2.72e9)}
    for variant, (d, layers, heads, ff, vocab, n_shards, total) in expected.items():
        config = synth.build_config(variant, "full")
        assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                config["intermediate_size"], config["vocab_size"]) == (d, layers, heads, ff, vocab)
        spec = synth._SPECS[variant]
        shapes = synth.tensor_shapes(config)
        itemsize = synth._DTYPE_BYTES[spec[4]]
        assert len(synth.plan_shards(shapes, itemsize, spec[5] or math.inf)) == n_shards
        assert sum(math.prod(s) for _, s in shapes) * itemsize == pytest.approx(total, rel=1e-3)
    assert synth.build_config("minicpm-1b", "full")["num_key_value_heads"] == 8


def test_tokenizer_is_llama_style(tiny_dirs):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dirs["prosparse-llama-2-7b"] / "tokenizer.model"))
    assert sp.vocab_size() == 600
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 3, 258)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    ids = sp.encode("Return the value  of x 2024 <用户>", add_bos=True)
    assert ids[0] == 1
    pieces = sp.encode("x 2024", out_type=str)
    assert pieces[0].startswith("▁") and pieces[-4:] == ["2", "0", "2", "4"]  # dummy prefix, split digits
    assert sp.decode(sp.encode("a  b <用户>")) == "a  b <用户>"  # identity normalization, byte fallback
    spec = sp.serialized_model_proto()
    for variant in VARIANTS:  # one cached model for every variant at a size
        assert (tiny_dirs[variant] / "tokenizer.model").read_bytes() == spec


def test_tokenizer_training_is_deterministic(tmp_path):
    fresh = synth.train_tokenizer(600, cache_dir=tmp_path)
    assert fresh.read_bytes() == synth.train_tokenizer(600).read_bytes()


def test_same_seed_same_bytes(tiny_dirs, tmp_path):
    for variant, name in (("prosparse-llama-2-7b", "model-00003-of-00006.safetensors"),
                          ("minicpm-1b", "pytorch_model.bin")):
        again = synthesize(tmp_path / variant, variant, progress=False)
        assert (again / name).read_bytes() == (tiny_dirs[variant] / name).read_bytes()
    other = synthesize(tmp_path / "seed1", "minicpm-1b", seed=1, progress=False)
    assert (other / "pytorch_model.bin").read_bytes() != (tiny_dirs["minicpm-1b"] / "pytorch_model.bin").read_bytes()


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_reference_logits_finite(tiny_dirs, variant):
    logits = hf_reference_logits(tiny_dirs[variant], TOKENS)
    assert logits.shape == (len(TOKENS), 600) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and logits.std() > 0.1


@pytest.mark.parametrize("variant", ["llama-silu", "relullama-7b"])
def test_transformers_loads_plain_llama_layouts(tiny_dirs, variant):
    """transformers' own loader reads the synthesized shards and tokenizer and agrees with the oracle."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[variant], dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([TOKENS])).logits[0]
    assert torch.allclose(logits, hf_reference_logits(tiny_dirs[variant], TOKENS), atol=1e-4)
    sp = spm.SentencePieceProcessor(model_file=str(tiny_dirs[variant] / "tokenizer.model"))
    text = "Return a new list, 42 times."
    assert AutoTokenizer.from_pretrained(tiny_dirs[variant])(text).input_ids == sp.encode(text, add_bos=True)


def test_fatrelu_threshold_is_applied(tiny_dirs, tmp_path):
    """Same weights run as FATReLU(0.01) and as ReLU give different logits; relu vs silu too."""
    import shutil
    relu_dir = tmp_path / "relu"
    shutil.copytree(tiny_dirs["prosparse-llama-2-7b"], relu_dir)
    config = json.loads((relu_dir / "config.json").read_text())
    (relu_dir / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    fat, relu = hf_reference_logits(tiny_dirs["prosparse-llama-2-7b"], TOKENS), hf_reference_logits(relu_dir, TOKENS)
    assert not torch.allclose(fat, relu, atol=1e-6)
    assert torch.allclose(fat, relu, atol=0.5)  # a small perturbation, not a different model


# --- MiniCPM: a direct transcription of the published modeling_minicpm forward (no KV cache, fp32) -------

def _rms_norm(h, weight, eps):
    variance = h.pow(2).mean(-1, keepdim=True)
    return h * torch.rsqrt(variance + eps) * weight


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def minicpm_forward(hf_dir: Path, token_ids: list[int]) -> torch.Tensor:
    """MiniCPMForCausalLM.forward transcribed: embed * scale_emb; residual + out * scale_depth/sqrt(L);
    lm_head(h / (hidden/dim_model_base)) with the tied embedding; FATReLU MLP; rotate-half RoPE."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    w = {k: v.float() for k, v in torch.load(hf_dir / "pytorch_model.bin", weights_only=True).items()}
    n, d, L = len(token_ids), cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, T = d // heads, cfg["rms_norm_eps"], cfg["hidden_act_param"]
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(n).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((n, n), float("-inf")).triu(1)
    h = w["model.embed_tokens.weight"][torch.tensor(token_ids)] * cfg["scale_emb"]
    for i in range(L):
        p = f"model.layers.{i}."
        x = _rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, hd).transpose(0, 1)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).view(n, kv_heads, hd).transpose(0, 1)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(n, kv_heads, hd).transpose(0, 1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1) @ v
        out = attn.transpose(0, 1).reshape(n, d) @ w[p + "self_attn.o_proj.weight"].T
        h = h + out * (cfg["scale_depth"] / math.sqrt(L))
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        gate = torch.where(gate >= T, gate, torch.zeros_like(gate))
        out = (gate * (x @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        h = h + out * (cfg["scale_depth"] / math.sqrt(L))
    h = _rms_norm(h, w["model.norm.weight"], eps)
    return (h / (d / cfg["dim_model_base"])) @ w["model.embed_tokens.weight"].T


def test_minicpm_folding_matches_transcription(tiny_dirs):
    hf_dir = tiny_dirs["minicpm-1b"]
    direct = minicpm_forward(hf_dir, TOKENS)
    folded = hf_reference_logits(hf_dir, TOKENS)
    assert (folded - direct).abs().max() <= 1e-5 * direct.abs().max()
    unscaled = minicpm_forward_without_scales(hf_dir)
    assert (unscaled - direct).abs().max() > 1e-2 * direct.abs().max()  # the scales matter here


def minicpm_forward_without_scales(hf_dir: Path) -> torch.Tensor:
    """The same checkpoint read as a plain LLaMA (scales ignored), to show the comparison can fail."""
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain"
        shutil.copytree(hf_dir, plain)
        cfg = json.loads((plain / "config.json").read_text())
        for key in ("scale_emb", "dim_model_base", "scale_depth"):
            cfg.pop(key)
        (plain / "config.json").write_text(json.dumps(cfg))
        return hf_reference_logits(plain, TOKENS)


# --- streaming, sharding, formats, overrides ----------------------------------------------------------------

def test_small_streams_into_many_shards_with_sharding_independent_values(tmp_path, monkeypatch):
    shard_bytes = 2_000_000
    sharded = synthesize(tmp_path / "sharded", "prosparse-llama-2-7b", size="small", shard_bytes=shard_bytes,
                         progress=False)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 7
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    for path in shards:  # a shard only exceeds the limit when it holds one big tensor
        with safe_open(path, "pt") as f:
            assert path.stat().st_size <= shard_bytes + 4096 or len(list(f.keys())) == 1
    monkeypatch.setattr(synth_tensors, "_CHUNK_ELEMENTS", 10_000)  # many row chunks per tensor
    single = synthesize(tmp_path / "single", "prosparse-llama-2-7b", size="small", shard_bytes=10**12,
                        progress=False)
    assert (single / "model.safetensors").exists() and not (single / "model.safetensors.index.json").exists()
    a, b = load_hf_state_dict(sharded), load_hf_state_dict(single)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.embed_tokens.weight"].shape == (1024, 256)
    assert 2e6 < sum(t.numel() for t in a.values()) < 2e7  # "a few M params"


def test_fmt_overrides_and_cli(tmp_path):
    as_bin = synthesize(tmp_path / "bin", "prosparse-llama-2-7b", fmt="bin", progress=False)
    assert len(list(as_bin.glob("pytorch_model-*-of-00006.bin"))) == 6
    assert (as_bin / "pytorch_model.bin.index.json").exists()
    as_st = synthesize(tmp_path / "st", "prosparse-llama-2-7b", progress=False)
    a, b = load_hf_state_dict(as_bin), load_hf_state_dict(as_st)
    assert all(torch.equal(a[k], b[k]) for k in a)
    synth.main([str(tmp_path / "cli"), "--variant", "minicpm-1b", "--fmt", "safetensors", "--quiet",
                "--set", "num_hidden_layers=1", "--set", "vocab_size=640", "--set", "rope_theta=50000.0"])
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vocab_size"], config["rope_theta"]) == (1, 640, 50000.0)
    state = load_hf_state_dict(tmp_path / "cli")
    assert state["model.embed_tokens.weight"].shape[0] == 640 and "lm_head.weight" not in state
    with safe_open(tmp_path / "cli" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "cli" / "tokenizer.model"))
    assert sp.vocab_size() == 600  # the converter pads to vocab_size
    with pytest.raises(FileExistsError):  # stale shards from another layout are not left behind silently
        synthesize(as_bin, "prosparse-llama-2-7b", fmt="bin", shard_bytes=10**12, progress=False)


def test_gate_bias_makes_relu_sparser(tmp_path):
    from hf_reference import build_reference_model
    rates = []
    for gate_bias in (0.0, -1.2):
        model = build_reference_model(synthesize(tmp_path / str(gate_bias), "relullama-7b",
                                                 overrides={"gate_bias": gate_bias}, progress=False))
        seen = []
        model.model.layers[0].mlp.act_fn.register_forward_hook(lambda m, i, o: seen.append((o > 0).float().mean()))
        with torch.no_grad():
            model(input_ids=torch.tensor([TOKENS]))
        rates.append(float(seen[0]))
    assert 0.4 < rates[0] < 0.6 and rates[1] < 0.25


def test_bf16_storage_rounds_like_torch():
    chunk = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    stored = torch.from_numpy(synth_tensors.to_stored(chunk, "bfloat16").copy()).view(torch.bfloat16)
    assert torch.equal(stored, torch.from_numpy(chunk).to(torch.bfloat16))
