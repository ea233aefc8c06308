"""Independent oracle: logits of a Hugging Face checkpoint directory computed with transformers' LLaMA.

Reads config.json and the weights (safetensors or torch .bin, sharded with an index or single-file; bf16 and
fp16 upcast to float32) and runs transformers' LlamaForCausalLM in float32 with eager attention:
- FFN activation from `hidden_act`: fatrelu -> FATReLU(hidden_act_param) (v if v >= T else 0, as in the
  ProSparse HF code), relu -> FATReLU(0), silu -> transformers' own;
- MiniCPM (config has scale_emb) as a LLaMA with its muP scales folded into the weights: embed_tokens *
  scale_emb, o_proj and down_proj * scale_depth / sqrt(num_hidden_layers), lm_head = (tied) embedding /
  (hidden_size / dim_model_base);
- rope_theta 10000 when the config has none.
Shares no code with hybridinfer's converter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


class FATReLU(nn.Module):
    """Thresholded ReLU of ProSparse: v where v >= threshold, else 0."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.where(v >= self.threshold, v, torch.zeros_like(v))


def load_hf_state_dict(hf_dir) -> dict[str, torch.Tensor]:
    """All tensors of the directory's weight files (index-listed shards or a single file), as float32."""
    hf_dir = Path(hf_dir)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (hf_dir / index_name).exists():
            weight_map = json.loads((hf_dir / index_name).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            break
    else:
        files = [name for name in ("model.safetensors", "pytorch_model.bin") if (hf_dir / name).exists()][:1]
        if not files:
            raise FileNotFoundError(f"no weights in {hf_dir}")
    state = {}
    for name in files:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            part = load_file(hf_dir / name)
        else:
            part = torch.load(hf_dir / name, map_location="cpu", weights_only=True)
        state.update({k: v.float() for k, v in part.items()})
    return state


def _activation(config: dict) -> nn.Module | None:
    act = config.get("hidden_act", "silu")
    if act == "fatrelu":
        return FATReLU(float(config["hidden_act_param"]))
    if act == "relu":
        return FATReLU(0.0)
    if act == "silu":
        return None
    raise ValueError(f"unsupported hidden_act {act!r}")


def fold_minicpm_scales(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """MiniCPM's scale_emb, residual scale and logit scale folded into plain LLaMA weights (new dict)."""
    residual_scale = config["scale_depth"] / math.sqrt(config["num_hidden_layers"])
    logit_scale = config["hidden_size"] / config["dim_model_base"]
    embed = state["model.embed_tokens.weight"]
    folded = dict(state)
    folded["model.embed_tokens.weight"] = embed * config["scale_emb"]
    folded["lm_head.weight"] = state.get("lm_head.weight", embed) / logit_scale
    for name, tensor in state.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            folded[name] = tensor * residual_scale
    return folded


def build_reference_model(hf_dir):
    """transformers LlamaForCausalLM (float32, eager attention) equivalent to the checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((Path(hf_dir) / "config.json").read_text())
    state = load_hf_state_dict(hf_dir)
    if "scale_emb" in config:
        state = fold_minicpm_scales(state, config)
    elif "lm_head.weight" not in state:  # tied LLaMA
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    llama_config = LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        hidden_act="silu", max_position_embeddings=config.get("max_position_embeddings", 4096),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6), tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))},
        bos_token_id=config.get("bos_token_id", 1), eos_token_id=config.get("eos_token_id", 2))
    llama_config._attn_implementation = "eager"
    model = LlamaForCausalLM(llama_config).float().eval()
    model.load_state_dict(state, strict=True)
    if _activation(config) is not None:
        for layer in model.model.layers:
            layer.mlp.act_fn = _activation(config)
    return model


@torch.no_grad()
def hf_reference_logits(hf_dir, token_ids: list[int]) -> torch.Tensor:
    """float32 logits [len(token_ids), vocab] of the checkpoint in `hf_dir` for one sequence."""
    model = build_reference_model(hf_dir)
    out = model(input_ids=torch.tensor([list(token_ids)], dtype=torch.long), use_cache=False)
    return out.logits[0].float()
