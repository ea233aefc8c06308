"""Export of a tiny trained-model stand-in: the published ProSparse layout, and transformers gives the same logits."""

import json

import pytest
import torch
from safetensors import safe_open

from tools.prosparse.export import export_hf_directory, write_sentencepiece_files
from tools.prosparse.model import FATReLU, SparseLlamaConfig, SparseLlamaForCausalLM
from tools.prosparse.tokenizer_training import train_tokenizer

transformers = pytest.importorskip("transformers")

TEXT = [f"Return the {word} of the {other} argument number {i}." for i, (word, other) in
        enumerate([("value", "first"), ("length", "second"), ("name", "third"), ("type", "last")] * 25)]
CONFIG = SparseLlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                           hidden_act="fatrelu", hidden_act_param=0.02)
PUBLISHED_FILES = {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tokenizer_path = str(root / "tok" / "tokenizer.model")
    processor = train_tokenizer(TEXT, CONFIG.vocab_size, tokenizer_path, num_threads=1)
    torch.manual_seed(0)
    model = SparseLlamaForCausalLM(CONFIG)
    with torch.no_grad():  # move away from the initialization so every tensor matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    out = root / "hf"
    export_hf_directory(model, str(out),
                        lambda directory, max_len: write_sentencepiece_files(tokenizer_path, directory, max_len))
    return model, processor, out


def test_directory_has_the_published_structure(exported):
    model, _, out = exported
    assert {p.name for p in out.iterdir()} == PUBLISHED_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["SparseLlamaForCausalLM"] and config["model_type"] == "sparsellama"
    assert config["hidden_act"] == "fatrelu" and config["hidden_act_param"] == 0.02
    assert (config["bos_token_id"], config["eos_token_id"], config["tie_word_embeddings"]) == (1, 2, False)
    for key, value in (("hidden_size", 64), ("intermediate_size", 160), ("num_attention_heads", 4),
                       ("num_key_value_heads", 2), ("num_hidden_layers", 2), ("max_position_embeddings", 32),
                       ("vocab_size", 300), ("rms_norm_eps", 1e-5), ("torch_dtype", "float32")):
        assert config[key] == value
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        expected |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        expected |= {f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"}
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert set(weights.keys()) == expected
        assert weights.get_tensor("model.layers.1.self_attn.k_proj.weight").shape == (32, 64)  # 2 KV heads x 16
        assert weights.get_tensor("lm_head.weight").dtype == torch.float32
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizer" and tokenizer_config["add_bos_token"] is True


def test_transformers_llama_with_fatrelu_gives_the_same_logits(exported):
    model, _, out = exported
    config = json.loads((out / "config.json").read_text())
    llama_keys = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "hidden_act", "hidden_act_param")}
    hf = transformers.LlamaForCausalLM.from_pretrained(
        str(out), config=transformers.LlamaConfig(**llama_keys, hidden_act="relu"), dtype=torch.float32)
    for layer in hf.model.layers:
        layer.mlp.act_fn = FATReLU(config["hidden_act_param"])
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.eval()(ids), hf.eval()(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


def test_transformers_tokenizer_matches_sentencepiece(exported):
    _, processor, out = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "Return the name of the  third argument 42.\nNext line"
    assert tokenizer(text).input_ids == [1] + processor.encode(text)


def test_export_converts_and_generates_through_the_normal_cli(exported, tmp_path):
    """export -> `hybridinfer convert` -> generate: the engine reproduces the training model's logits."""
    import numpy as np
    from click.testing import CliRunner

    import hybridinfer
    from hybridinfer.cli.main import cli

    model, processor, out = exported
    gguf = tmp_path / "tiny.gguf"
    result = CliRunner().invoke(cli, ["convert", str(out), "-o", str(gguf), "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    engine = hybridinfer.load(str(gguf), type_k="f32", type_v="f32")  # compared with float32 torch at 1e-4
    assert engine.config.activation == "fatrelu"
    assert engine.config.activation_threshold == pytest.approx(CONFIG.hidden_act_param)
    ids = engine.tokenize("Return the value of the first argument")
    assert ids == [1] + processor.encode("Return the value of the first argument")
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0].numpy()
    got = engine.logits(ids)
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 1e-4
    generated = CliRunner().invoke(cli, ["generate", "-m", str(gguf), "-p", "Return the", "-n", "5", "--temp", "0",
                                         "--exact"])
    assert generated.exit_code == 0, generated.output
    assert generated.stdout.startswith("Return the")
