"""Write a Hugging Face directory laid out like a published ProSparse checkpoint (prosparse-llama-2-7b).

    config.json              architectures SparseLlamaForCausalLM, model_type sparsellama, hidden_act fatrelu,
                             hidden_act_param T, the usual LLaMA keys
    model.safetensors        float32 weights under HF LlamaForCausalLM names, Q/K in rotate-half order
    tokenizer.model          the SentencePiece model (LLaMA-style: unk/bos/eos = 0/1/2, byte fallback)
    tokenizer_config.json    LlamaTokenizer, add_bos_token true
    special_tokens_map.json
    generation_config.json

The published repositories also carry `auto_map` and remote modeling code; this directory has neither, so
`transformers` loads it as a plain LlamaForCausalLM whose `mlp.act_fn` must be swapped for FATReLU
(pick the behaviour from model_type + hidden_act, as `hybridinfer/convert/hf_config.py` does).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import torch
from safetensors.torch import save_file

from .model import SparseLlamaForCausalLM
from .tokenizer_training import BOS_ID, EOS_ID

WEIGHTS_FILE = "model.safetensors"


def hf_config(model: SparseLlamaForCausalLM, bos_id: int | None = BOS_ID, eos_id: int | None = EOS_ID) -> dict:
    c = model.config
    return {
        "architectures": ["SparseLlamaForCausalLM"],
        "model_type": "sparsellama",
        "hidden_act": "fatrelu",
        "hidden_act_param": float(c.hidden_act_param) if c.hidden_act == "fatrelu" else 0.0,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "num_hidden_layers": c.num_hidden_layers,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "vocab_size": c.vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        "initializer_range": c.initializer_range,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "sp_model_kwargs": {},
    }


SPECIAL_TOKENS_MAP = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


WriteTokenizerFiles = Callable[[str, int], None]  # (directory, model_max_length) -> writes the tokenizer files


def write_sentencepiece_files(tokenizer_model_path: str, out_dir: str, model_max_length: int) -> None:
    """tokenizer.model, tokenizer_config.json and special_tokens_map.json of a LLaMA-style SentencePiece model."""
    shutil.copyfile(tokenizer_model_path, os.path.join(out_dir, "tokenizer.model"))
    write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(model_max_length))
    write_json(os.path.join(out_dir, "special_tokens_map.json"), SPECIAL_TOKENS_MAP)


def export_hf_directory(model: SparseLlamaForCausalLM, out_dir: str, write_tokenizer_files: WriteTokenizerFiles,
                        bos_id: int | None = BOS_ID, eos_id: int | None = EOS_ID) -> None:
    """Write the directory. The model's activation must be relu or fatrelu (relu is written as fatrelu T=0).
    bos_id/eos_id: the tokenizer's (1/2 for the SentencePiece tokenizers trained here)."""
    if model.config.hidden_act == "silu":
        raise ValueError("the model still uses SiLU; a ProSparse checkpoint is ReLU/FATReLU (train the ReLU stages first)")
    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(os.path.join(out_dir, "config.json"), hf_config(model, bos_id, eos_id))
    write_json(os.path.join(out_dir, "generation_config.json"),
               {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False})
    write_tokenizer_files(out_dir, model.config.max_position_embeddings)


def write_json(path: str, values: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, sort_keys=False)
        handle.write("\n")
