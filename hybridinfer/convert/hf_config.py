"""Read a Hugging Face checkpoint's config.json and decide what model it is.

The class name alone is ambiguous (`SparseLlamaForCausalLM` is reused by unrelated projects), so the
architecture is chosen from `model_type` + `hidden_act`:

    SparseLlamaForCausalLM, model_type sparsellama, hidden_act fatrelu/relu/silu -> GGUF arch llama
    LlamaForCausalLM, model_type llama, hidden_act relu/silu/fatrelu              -> GGUF arch llama
    MiniCPMForCausalLM (model_type minicpm or absent), hidden_act fatrelu/relu/silu -> GGUF arch minicpm
    Qwen2ForCausalLM, model_type qwen2 (Qwen2, Qwen2.5: Q/K/V biases)               -> GGUF arch qwen2
    Qwen3ForCausalLM, model_type qwen3 (Q and K head norms, head_dim)                -> GGUF arch qwen3

Llama 3.x is LlamaForCausalLM with `rope_scaling` of rope_type llama3 (rope_config.py).

Every value the converter uses is read through config_values.ConfigValues (type and range checked, the key
named on refusal), and the attention shapes are checked against each other, before any output exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import HybridInferError
from .config_values import ConfigValues
from .json_file import read_json_object
from .rope_config import RopeScaling, read_rope_scaling, read_rope_theta

SUPPORTED = ("SparseLlamaForCausalLM (sparsellama), LlamaForCausalLM (llama), MiniCPMForCausalLM, "
             "Qwen2ForCausalLM (qwen2), Qwen3ForCausalLM (qwen3)")
_CLASSES = {  # (architectures[0], model_type) -> GGUF architecture
    ("SparseLlamaForCausalLM", "sparsellama"): "llama",
    ("LlamaForCausalLM", "llama"): "llama",
    ("Qwen2ForCausalLM", "qwen2"): "qwen2",
    ("Qwen3ForCausalLM", "qwen3"): "qwen3",
}
PERMUTED_ARCHITECTURES = ("llama", "minicpm")  # llama.cpp's converter reorders their Q/K rows for adjacent-pair RoPE


@dataclass(frozen=True)
class HFModelSpec:
    gguf_arch: str  # "llama", "minicpm", "qwen2" or "qwen3"
    hf_class: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    head_dim: int  # config.json's head_dim, else hidden_size / num_attention_heads
    head_dim_given: bool  # config.json states head_dim (llama.cpp then writes attention.key_length/value_length)
    context_length: int
    rms_eps: float
    rope_base: float
    rope_scaling: RopeScaling
    activation: str  # "silu", "relu" or "fatrelu"
    activation_threshold: float
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    embedding_scale: float = 1.0  # MiniCPM only
    residual_scale: float = 1.0
    logit_scale: float = 1.0

    # what the layer adds to LLaMA's, named as model_file.config.ModelConfig names it (tensor_shapes reads these)
    @property
    def attention_bias(self) -> bool:
        return self.gguf_arch == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.gguf_arch == "qwen3"

    post_norms = False

    @property
    def permutes_qk(self) -> bool:
        return self.gguf_arch in PERMUTED_ARCHITECTURES


def read_spec(hf_dir: Path) -> HFModelSpec:
    """The model described by hf_dir/config.json, every value the converter uses checked (config_values.py)."""
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise HybridInferError(f"{hf_dir} has no config.json; give a Hugging Face checkpoint directory")
    values = ConfigValues(read_json_object(config_path), config_path)
    arch, hf_class = _architecture(values)
    if arch in ("qwen2", "qwen3") and values.flag("use_sliding_window", False):
        raise HybridInferError(f"unsupported checkpoint: {config_path} sets use_sliding_window, which is not "
                               "implemented for Qwen")
    activation, threshold = _activation(values)
    spec = _spec(values, arch, hf_class, activation, threshold)
    _check_heads(spec, config_path)
    return spec


def _architecture(values: ConfigValues) -> tuple[str, str]:
    hf_class = (values.names("architectures") or ["(none)"])[0]
    model_type = values.text("model_type")
    if hf_class == "MiniCPMForCausalLM" and model_type in (None, "minicpm"):
        return "minicpm", hf_class
    if (hf_class, model_type) in _CLASSES:
        return _CLASSES[hf_class, model_type], hf_class
    raise HybridInferError(
        f"unsupported checkpoint: architectures {hf_class!r} with model_type {model_type!r}; supported: {SUPPORTED}")


def _spec(values: ConfigValues, arch: str, hf_class: str, activation: str, threshold: float) -> HFModelSpec:
    n_head = values.count("num_attention_heads")
    n_layer = values.count("num_hidden_layers")
    n_embd = values.count("hidden_size")
    minicpm = arch == "minicpm"
    head_dim_given = values.config.get("head_dim") is not None
    return HFModelSpec(
        gguf_arch=arch,
        hf_class=hf_class,
        n_vocab=values.count("vocab_size"),
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # transformers reads an absent or null num_key_value_heads as num_attention_heads (no GQA)
        n_head_kv=n_head if values.config.get("num_key_value_heads") is None else values.count("num_key_value_heads"),
        n_ff=values.count("intermediate_size"),
        head_dim=values.count("head_dim") if head_dim_given else n_embd // n_head,
        head_dim_given=head_dim_given,
        context_length=values.count("max_position_embeddings", 4096),
        rms_eps=values.number("rms_norm_eps", 1e-6),
        rope_base=read_rope_theta(values),
        rope_scaling=read_rope_scaling(values, arch),
        activation=activation,
        activation_threshold=threshold,
        tie_word_embeddings=values.flag("tie_word_embeddings", minicpm),
        bos_token_id=values.token_id("bos_token_id"),
        eos_token_id=values.token_id("eos_token_id"),
        embedding_scale=values.number("scale_emb", 1.0) if minicpm else 1.0,
        residual_scale=values.number("scale_depth", 1.0) / math.sqrt(n_layer) if minicpm else 1.0,
        logit_scale=n_embd / values.count("dim_model_base", n_embd) if minicpm else 1.0,
    )


def _check_heads(spec: HFModelSpec, config_path: Path) -> None:
    """The attention shapes the tensor table and the Q/K permutation rely on."""
    if spec.n_embd % spec.n_head and not spec.head_dim_given:
        problem = f"hidden_size {spec.n_embd} is not a multiple of num_attention_heads {spec.n_head}"
    elif spec.head_dim % 2:
        problem = (f"the head size {'head_dim' if spec.head_dim_given else 'hidden_size / num_attention_heads'} = "
                   f"{spec.head_dim} is odd (RoPE pairs its rows)")
    elif spec.n_head % spec.n_head_kv:
        problem = f"num_attention_heads {spec.n_head} is not a multiple of num_key_value_heads {spec.n_head_kv}"
    else:
        return
    raise HybridInferError(f"{config_path}: {problem}; correct config.json or download it again")


def _activation(values: ConfigValues) -> tuple[str, float]:
    act = values.text("hidden_act") if "hidden_act" in values.config else "silu"
    if act in ("silu", "swish"):
        return "silu", 0.0
    if act == "relu":
        return "relu", 0.0
    if act == "fatrelu":
        threshold = values.number("hidden_act_param", 0.0, positive=False)
        return ("fatrelu", threshold) if threshold != 0.0 else ("relu", 0.0)
    raise HybridInferError(
        f"unsupported hidden_act {act!r} (supported: silu, relu, fatrelu with hidden_act_param)")
