"""Read a Hugging Face checkpoint's config.json and decide what model it is.

The class name alone is ambiguous (`SparseLlamaForCausalLM` is reused by unrelated projects), so the
architecture is chosen from `model_type` + `hidden_act`:

    SparseLlamaForCausalLM, model_type sparsellama, hidden_act fatrelu/relu/silu -> GGUF arch llama
    LlamaForCausalLM, model_type llama, hidden_act relu/silu/fatrelu              -> GGUF arch llama
    MiniCPMForCausalLM (model_type minicpm or absent), hidden_act fatrelu/relu/silu -> GGUF arch minicpm
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import HybridInferError

SUPPORTED = "SparseLlamaForCausalLM (sparsellama), LlamaForCausalLM (llama), MiniCPMForCausalLM"


@dataclass(frozen=True)
class HFModelSpec:
    gguf_arch: str  # "llama" or "minicpm"
    hf_class: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context_length: int
    rms_eps: float
    rope_base: float
    activation: str  # "silu", "relu" or "fatrelu"
    activation_threshold: float
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    embedding_scale: float = 1.0  # MiniCPM only
    residual_scale: float = 1.0
    logit_scale: float = 1.0


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise HybridInferError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_spec(hf_dir: Path) -> HFModelSpec:
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise HybridInferError(f"{hf_dir} has no config.json; give a Hugging Face checkpoint directory")
    config = read_json(config_path)
    hf_class = (config.get("architectures") or ["(none)"])[0]
    model_type = config.get("model_type")
    if hf_class == "MiniCPMForCausalLM" and model_type in (None, "minicpm"):
        arch = "minicpm"
    elif hf_class == "SparseLlamaForCausalLM" and model_type == "sparsellama":
        arch = "llama"
    elif hf_class == "LlamaForCausalLM" and model_type == "llama":
        arch = "llama"
    else:
        raise HybridInferError(
            f"unsupported checkpoint: architectures {hf_class!r} with model_type {model_type!r}; supported: {SUPPORTED}")
    if config.get("rope_scaling"):
        raise HybridInferError(f"unsupported checkpoint: rope_scaling {config['rope_scaling']!r} is not implemented")
    activation, threshold = _activation(config)
    try:
        return _spec(config, arch, hf_class, activation, threshold)
    except KeyError as exc:
        raise HybridInferError(f"{config_path} lacks the key {exc.args[0]!r}; the checkpoint is incomplete") from None


def _spec(config: dict, arch: str, hf_class: str, activation: str, threshold: float) -> HFModelSpec:
    n_head = int(config["num_attention_heads"])
    n_layer = int(config["num_hidden_layers"])
    n_embd = int(config["hidden_size"])
    minicpm = arch == "minicpm"
    return HFModelSpec(
        gguf_arch=arch,
        hf_class=hf_class,
        n_vocab=int(config["vocab_size"]),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=int(config.get("num_key_value_heads") or n_head),
        n_ff=int(config["intermediate_size"]),
        context_length=int(config.get("max_position_embeddings", 4096)),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_base=float(config.get("rope_theta") or 10000.0),
        activation=activation,
        activation_threshold=threshold,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", minicpm)),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=_first(config.get("eos_token_id")),
        embedding_scale=float(config.get("scale_emb", 1.0)) if minicpm else 1.0,
        residual_scale=float(config.get("scale_depth", 1.0)) / math.sqrt(n_layer) if minicpm else 1.0,
        logit_scale=n_embd / float(config.get("dim_model_base", n_embd)) if minicpm else 1.0,
    )


def _activation(config: dict) -> tuple[str, float]:
    act = config.get("hidden_act", "silu")
    if act in ("silu", "swish"):
        return "silu", 0.0
    if act == "relu":
        return "relu", 0.0
    if act == "fatrelu":
        threshold = float(config.get("hidden_act_param", 0.0))
        return ("fatrelu", threshold) if threshold != 0.0 else ("relu", 0.0)
    raise HybridInferError(
        f"unsupported hidden_act {act!r} (supported: silu, relu, fatrelu with hidden_act_param)")


def _first(value):
    return value[0] if isinstance(value, list) else value
