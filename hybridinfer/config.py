"""Model hyper-parameters read from GGUF metadata.

llama.cpp has no metadata key for the FFN activation (its llama graph always uses SiLU), so hybridinfer
records it under its own keys, written by `hybridinfer convert`:

    hybridinfer.ffn_activation            string: "silu", "relu" or "fatrelu"
    hybridinfer.ffn_activation_threshold  float32: FATReLU's threshold T (0 for relu and silu)

A file without them runs with SiLU, except PowerInfer (`PWRI`) files, whose models are ReLU models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import HybridInferError
from .gguf_file import GGUFFile

ACTIVATION_KEY = "hybridinfer.ffn_activation"
THRESHOLD_KEY = "hybridinfer.ffn_activation_threshold"
ACTIVATIONS = ("silu", "relu", "fatrelu")
ARCHITECTURES = ("llama", "minicpm")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_vocab: int
    n_embd: int  # width of the residual stream
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int  # FFN intermediate size (number of neurons per layer)
    head_dim: int
    rope_dim: int  # leading dimensions of each head that RoPE rotates
    rope_base: float
    rms_eps: float
    context_length: int
    activation: str
    activation_threshold: float
    tied_embeddings: bool
    embedding_scale: float = 1.0  # MiniCPM: token embeddings are multiplied by this
    residual_scale: float = 1.0  # MiniCPM: each block's output is multiplied by this before the residual add
    logit_scale: float = 1.0  # MiniCPM: logits are divided by this

    @classmethod
    def from_gguf(cls, model: GGUFFile) -> "ModelConfig":
        arch = model.architecture
        if arch not in ARCHITECTURES:
            raise HybridInferError(
                f"{model.path}: architecture {arch or '(none)'!r} is not supported (supported: {', '.join(ARCHITECTURES)})")

        def key(name, default=None):
            value = model.get(f"{arch}.{name}", default)
            if value is None:
                raise HybridInferError(f"{model.path} lacks the metadata key {arch}.{name}; the file is incomplete")
            return value

        n_embd = int(key("embedding_length"))
        n_head = int(key("attention.head_count"))
        head_dim = n_embd // n_head
        vocab = model.get(f"{arch}.vocab_size") or len(model.get("tokenizer.ggml.tokens") or []) \
            or model.tensor("token_embd.weight").shape[0]
        activation = str(model.get(ACTIVATION_KEY, "relu" if model.is_powerinfer else "silu"))
        if activation not in ACTIVATIONS:
            raise HybridInferError(f"{model.path}: FFN activation {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
        n_layer = int(key("block_count"))
        is_minicpm = arch == "minicpm"
        return cls(
            architecture=arch,
            n_vocab=int(vocab),
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            n_ff=int(key("feed_forward_length")),
            head_dim=head_dim,
            rope_dim=int(key("rope.dimension_count", head_dim)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            context_length=int(key("context_length", 2048)),
            activation=activation,
            activation_threshold=float(model.get(THRESHOLD_KEY, 0.0)) if activation == "fatrelu" else 0.0,
            tied_embeddings="output.weight" not in model.tensors,
            embedding_scale=float(key("embedding_scale", 12.0)) if is_minicpm else 1.0,
            residual_scale=float(key("residual_scale", 1.4 / math.sqrt(n_layer))) if is_minicpm else 1.0,
            logit_scale=float(key("logit_scale", 1.0)) if is_minicpm else 1.0,
        )
