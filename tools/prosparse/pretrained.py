"""Start the recipe from a pretrained LLaMA-architecture GGUF (e.g. SmolLM2-135M) instead of from scratch.

Weights come from hybridinfer's own loader as float32 tensors. GGUF Q/K rows are permuted for
adjacent-pair RoPE (within each head, GGUF row 2j = HF row j and row 2j+1 = HF row j + head_dim/2); they
are un-permuted here so the model runs HF rotate-half RoPE and exports in HF layout. Tied embeddings are
untied (the exported checkpoint stores lm_head, tie_word_embeddings false).

The text is tokenized with the GGUF's own vocabulary (hybridinfer's tokenizer). For export, a
SentencePiece (`llama`) vocabulary is written as tokenizer.model; a byte-level BPE (`gpt2`) vocabulary,
which has no tokenizer.model, is written as a `tokenizers` tokenizer.json.
"""

from __future__ import annotations

import os

import torch

from hybridinfer.model_file.config import ModelConfig
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.text.vocabulary import tokenizer_from_metadata
from hybridinfer.reference.weights import load_weights

from .export import write_json
from .model import SparseLlamaConfig, SparseLlamaForCausalLM
from .recipe import CorpusTokenizer


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """GGUF adjacent-pair order -> HF rotate-half order, per head: HF row j = GGUF row 2j, j + hd/2 = 2j + 1."""
    rows, columns = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half order -> GGUF adjacent-pair order (the inverse of unpermute_rope_rows)."""
    rows, columns = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, columns).transpose(1, 2).reshape(rows, columns)


def load_gguf_model(path: str, max_positions: int) -> tuple[SparseLlamaForCausalLM, CorpusTokenizer]:
    gguf = GGUFFile(path)
    c = ModelConfig.from_gguf(gguf)
    if c.architecture != "llama" or c.rope_dim != c.head_dim:
        raise ValueError(f"{path}: only LLaMA-architecture models with full-head RoPE can be ReLU-fied here "
                         f"(got {c.architecture}, rope_dim {c.rope_dim} of head_dim {c.head_dim})")
    weights = load_weights(gguf, c)
    config = SparseLlamaConfig(
        vocab_size=c.n_vocab, hidden_size=c.n_embd, intermediate_size=c.n_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_head_kv,
        max_position_embeddings=max(max_positions, min(c.context_length, 8192)),
        rms_norm_eps=float(f"{c.rms_eps:.7g}"),  # GGUF stores it as float32: 1e-5 reads 9.99999974e-06
        rope_theta=c.rope_base, hidden_act=c.activation, hidden_act_param=c.activation_threshold)
    model = SparseLlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(weights.token_embd)
        model.lm_head.weight.copy_(weights.output)
        model.model.norm.weight.copy_(weights.output_norm)
        for layer, w in zip(model.model.layers, weights.layers):
            layer.input_layernorm.weight.copy_(w.attn_norm)
            layer.self_attn.q_proj.weight.copy_(unpermute_rope_rows(w.attn_q, c.n_head))
            layer.self_attn.k_proj.weight.copy_(unpermute_rope_rows(w.attn_k, c.n_head_kv))
            layer.self_attn.v_proj.weight.copy_(w.attn_v)
            layer.self_attn.o_proj.weight.copy_(w.attn_output)
            layer.post_attention_layernorm.weight.copy_(w.ffn_norm)
            layer.mlp.gate_proj.weight.copy_(w.ffn_gate)
            layer.mlp.up_proj.weight.copy_(w.ffn_up)
            layer.mlp.down_proj.weight.copy_(w.ffn_down)
    return model, gguf_corpus_tokenizer(gguf)


def gguf_corpus_tokenizer(gguf: GGUFFile) -> CorpusTokenizer:
    tokenizer = tokenizer_from_metadata(gguf.metadata)

    def encode(texts: list[str]) -> list[list[int]]:
        return [tokenizer.encode(text, add_bos=False, parse_special=False) for text in texts]

    def write_files(out_dir: str, model_max_length: int) -> None:
        write_gguf_tokenizer_files(gguf, tokenizer, out_dir, model_max_length)

    return CorpusTokenizer(encode=encode, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, add_bos=tokenizer.add_bos,
                           vocab_size=tokenizer.vocab_size, write_hf_files=write_files)


def byte_level_bpe_tokenizer(gguf: GGUFFile, tokenizer):
    """A `tokenizers` tokenizer for a gpt2-style GGUF vocabulary: hybridinfer's BPE model and pre-tokenizer,
    a byte-level decoder, and the control tokens registered as special tokens (never split)."""
    from tokenizers import AddedToken, decoders

    from hybridinfer.text.tokenizer import CONTROL
    from hybridinfer.text.tokenizer_bpe import build_bpe_tokenizer, pre_tokenizer_for

    hf = build_bpe_tokenizer(tokenizer.tokens, gguf.get("tokenizer.ggml.merges"),
                             pre_tokenizer_for(gguf.get("tokenizer.ggml.pre")))
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(text, special=True, normalized=False)
                           for text, kind in zip(tokenizer.tokens, tokenizer.token_types) if kind == CONTROL])
    return hf


def write_gguf_tokenizer_files(gguf: GGUFFile, tokenizer, out_dir: str, model_max_length: int) -> None:
    special = {}
    for role, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
        if token_id is not None:
            special[role] = tokenizer.tokens[token_id]
    kind = gguf.get("tokenizer.ggml.model")
    if kind == "llama":
        from hybridinfer.text.tokenizer_spm import build_sentencepiece_processor
        processor = build_sentencepiece_processor(tokenizer.tokens, gguf.get("tokenizer.ggml.scores") or
                                                  [0.0] * tokenizer.vocab_size, tokenizer.token_types)
        with open(os.path.join(out_dir, "tokenizer.model"), "wb") as handle:
            handle.write(processor.serialized_model_proto())
        tokenizer_class = "LlamaTokenizer"
    else:
        byte_level_bpe_tokenizer(gguf, tokenizer).save(os.path.join(out_dir, "tokenizer.json"))
        tokenizer_class = "PreTrainedTokenizerFast"
    write_json(os.path.join(out_dir, "tokenizer_config.json"),
               {"tokenizer_class": tokenizer_class, "add_bos_token": bool(tokenizer.add_bos), "add_eos_token": False,
                **special, "clean_up_tokenization_spaces": False, "model_max_length": model_max_length})
    write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
