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

from ..errors import HybridInferError
from .gguf_file import GGUFFile
from .tensor_shapes import OUTPUT, TOKEN_EMBD

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
        """The hyper-parameters, each checked for type and range (the numba kernels check no bounds, so every
        shape they rely on is validated here, before any weight is read)."""
        arch = model.architecture
        if arch not in ARCHITECTURES:
            raise HybridInferError(
                f"{model.path}: architecture {arch or '(none)'!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
        meta = _Metadata(model, arch)
        n_embd = meta.int("embedding_length", 1, MAX_WIDTH)
        n_head = meta.int("attention.head_count", 1, n_embd)
        if n_embd % n_head:
            meta.fail("attention.head_count", n_head, f"a divisor of the embedding length {n_embd}")
        head_dim = n_embd // n_head
        n_head_kv = meta.int("attention.head_count_kv", 1, n_head, default=n_head)
        if n_head % n_head_kv:
            meta.fail("attention.head_count_kv", n_head_kv, f"a divisor of the head count {n_head}")
        rope_dim = meta.int("rope.dimension_count", 2, head_dim, default=head_dim)
        if rope_dim % 2:
            meta.fail("rope.dimension_count", rope_dim, "an even number (RoPE rotates pairs)")
        activation = str(model.get(ACTIVATION_KEY, "relu" if model.is_powerinfer else "silu"))
        if activation not in ACTIVATIONS:
            raise HybridInferError(f"{model.path}: FFN activation {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
        n_layer = meta.int("block_count", 1, MAX_LAYERS)
        is_minicpm = arch == "minicpm"
        return cls(
            architecture=arch,
            n_vocab=_vocab_size(model, meta),
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=meta.int("feed_forward_length", 1, MAX_WIDTH),
            head_dim=head_dim,
            rope_dim=rope_dim,
            rope_base=meta.float("rope.freq_base", 10000.0, low=1.0),
            rms_eps=meta.float("attention.layer_norm_rms_epsilon", 1e-5, low=0.0, high=1.0),
            context_length=meta.int("context_length", 1, 2**31 - 1, default=2048),
            activation=activation,
            activation_threshold=meta.float(THRESHOLD_KEY, 0.0, absolute=True) if activation == "fatrelu" else 0.0,
            tied_embeddings=OUTPUT not in model.tensors,
            embedding_scale=meta.float("embedding_scale", 12.0) if is_minicpm else 1.0,
            residual_scale=meta.float("residual_scale", 1.4 / math.sqrt(n_layer)) if is_minicpm else 1.0,
            logit_scale=meta.float("logit_scale", 1.0, low=1e-30) if is_minicpm else 1.0,
        )


MAX_WIDTH = 2**20  # embedding and FFN widths above this are no model's
MAX_LAYERS = 4096


def _vocab_size(model: GGUFFile, meta: "_Metadata") -> int:
    tokens = model.get("tokenizer.ggml.tokens")
    default = len(tokens) if isinstance(tokens, list) and tokens else None
    if default is None and TOKEN_EMBD in model.tensors:
        default = model.tensor(TOKEN_EMBD).shape[0]
    return meta.int("vocab_size", 1, 2**31 - 1, default=default)


class _Metadata:
    """`GGUFFile`'s typed, range-checked reads, of `ARCH.name` keys; a failure is one line naming the key."""

    def __init__(self, model: GGUFFile, arch: str):
        self.model, self.arch = model, arch

    def _full(self, name: str) -> str:
        return name if "." in name and name.split(".")[0] in ("hybridinfer", "general", "tokenizer") else f"{self.arch}.{name}"

    def fail(self, name: str, value, expected: str):
        raise self.model.bad_value(self._full(name), value, expected)

    def int(self, name: str, low: int, high: int, default: int | None = None) -> int:
        return self.model.integer(self._full(name), low, high, default)

    def float(self, name: str, default: float, low: float | None = None, high: float | None = None,
              absolute: bool = False) -> float:
        return self.model.number(self._full(name), default, above=low, below=high, at_least=0.0 if absolute else None)
