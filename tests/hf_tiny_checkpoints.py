"""Tiny random Hugging Face checkpoints of Qwen2, Qwen3 and Llama 3 written by transformers itself (save_pretrained,
safetensors), each with a byte-level BPE tokenizer.json trained here with the `tokenizers` library on Llama 3's or
Qwen2's pre-tokenizer (their regexes as the published tokenizer.json files hold them), special and added tokens, a
post-processor and tokenizer_config.json as the published checkpoints have them. Random weights of a size that
makes every tensor matter: norms around 1, biases and head norms non-zero. Shares no code with the converter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARCHS = ("qwen2", "qwen3", "llama3")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
WORDS = ("the quick brown fox jumps over lazy dog it's we're they'll I've model token layer weight value attention "
         "rotary hello world Paris France capital river mountain 2024 1999 42 3.14 é ü naïve café").split()
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATES = {
    "llama3": "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] }}<|eot_id|>{% endfor %}",
    "qwen": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
}
# per architecture: layers, attention heads, KV heads, head_dim (None: hidden / heads), tied embeddings
SHAPES = {"qwen2": (2, 4, 2, None, False), "qwen3": (2, 4, 2, 32, True), "llama3": (2, 4, 2, None, True)}
HIDDEN, FFN = 64, 96
BPE_SIZE = 320  # the trained vocabulary before special and added tokens
QWEN_PADDING = 13  # Qwen's config.json vocab_size exceeds its tokenizer's, as Qwen2.5's does (151936 > 151665)
# Llama 3 scaling that changes low and middle frequencies of a 16-wide head within a few positions
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def corpus(seed: int = 0, lines: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) + rng.choice([".", "!", "?", ",", "\n", ""])
            for _ in range(lines)]


def write_tokenizer(hf_dir: Path, arch: str) -> dict:
    """tokenizer.json and tokenizer_config.json in `hf_dir`; returns {"bos": id or None, "eos": id, "size": n}."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import trainers

    llama = arch == "llama3"
    tokenizer = Tokenizer(models.BPE())
    if not llama:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX if llama else QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    specials = LLAMA3_SPECIALS if llama else QWEN_SPECIALS
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if not llama:  # Qwen3's <think> is an added token that is not special
        tokenizer.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    ids = {t: tokenizer.token_to_id(t) for t in specials}
    bos = ids["<|begin_of_text|>"] if llama else None
    if llama:
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    data = json.loads((hf_dir / "tokenizer.json").read_text())
    data["model"]["ignore_merges"] = llama  # as Llama 3's and Qwen2's tokenizer.json files say
    (hf_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256,
              "chat_template": CHAT_TEMPLATES["llama3" if llama else "qwen"]}
    if llama:
        config.update(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    else:
        config.update(add_bos_token=False, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config))
    eos = ids["<|eot_id|>"] if llama else ids["<|im_end|>"]
    return {"bos": bos, "eos": eos, "pad": None if llama else ids["<|endoftext|>"], "size": tokenizer.get_vocab_size(),
            "endoftext": None if llama else ids["<|endoftext|>"]}


def _config(arch: str, n_vocab: int, token_ids: dict):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    n_layer, n_head, n_head_kv, head_dim, tied = SHAPES[arch]
    common = dict(vocab_size=n_vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=n_layer,
                  num_attention_heads=n_head, num_key_value_heads=n_head_kv, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=tied, hidden_act="silu")
    if arch == "llama3":
        return LlamaConfig(**common, rope_parameters={"rope_theta": 10000.0, **LLAMA3_ROPE},
                           bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"])
    qwen_ids = dict(bos_token_id=token_ids["endoftext"], eos_token_id=token_ids["eos"])
    if arch == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **qwen_ids)
    return Qwen3Config(**common, head_dim=head_dim, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                       **qwen_ids)


@torch.no_grad()
def _randomize(model, seed: int) -> None:
    """Weights that make every tensor count: matrices N(0, 1/fan_in) (embeddings N(0, 1)), norm weights 1 + N(0, 0.1^2),
    biases N(0, 0.25)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 2:
            param.copy_(noise if "embed_tokens" in name else noise / param.shape[1] ** 0.5)
        elif name.endswith(".bias"):
            param.copy_(0.5 * noise)
        else:
            param.copy_(1 + 0.1 * noise)


def write_checkpoint(hf_dir: Path, arch: str, seed: int = 0, v4_config: bool = False) -> Path:
    """A tiny `arch` checkpoint (ARCHS) in `hf_dir`; `v4_config`: config.json as transformers 4 wrote it (rope_theta
    and rope_scaling at the top, as the published Llama 3.x and Qwen2.5 checkpoints have it)."""
    from transformers import AutoModelForCausalLM

    hf_dir.mkdir(parents=True, exist_ok=True)
    token_ids = write_tokenizer(hf_dir, arch)
    n_vocab = token_ids["size"] + (0 if arch == "llama3" else QWEN_PADDING)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, n_vocab, token_ids), dtype=torch.float32)
    _randomize(model, seed)
    model.save_pretrained(hf_dir, safe_serialization=True)
    if v4_config:
        path = hf_dir / "config.json"
        config = json.loads(path.read_text())
        params = config.pop("rope_parameters")
        config["rope_theta"] = params.pop("rope_theta")
        config["rope_scaling"] = params if params.get("rope_type") != "default" else None
        path.write_text(json.dumps(config))
    return hf_dir


@torch.no_grad()
def transformers_logits(hf_dir: Path, ids: list[int]) -> np.ndarray:
    """float32 logits (len(ids), vocab) of the checkpoint, by transformers' own model class (eager attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
