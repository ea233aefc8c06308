"""Model hyper-parameters read from GGUF metadata.

llama.cpp has no metadata key for the FFN activation (its llama graph always uses SiLU), so hybridinfer
records it under its own keys, written by `hybridinfer convert`:

    hybridinfer.ffn_activation            string: "silu", "relu" or "fatrelu"
    hybridinfer.ffn_activation_threshold  float32: FATReLU's threshold T (0 for relu and silu)

A file without them runs with SiLU, except PowerInfer (`PWRI`) files, whose models are ReLU models; Gemma 3's FFN
is GELU (tanh approximation), as llama.cpp's graph for it.

Architectures beyond LLaMA's shape (docs/architectures.md), as llama.cpp reads them:
    qwen2    Q/K/V biases; RoPE on halves (NEOX)
    qwen3    RMSNorm on each Q and K head before RoPE (attn_q_norm, attn_k_norm); NEOX RoPE
    gemma3   Q/K norms, norms after attention and after the FFN, GELU, embeddings scaled by sqrt(n_embd), sliding-
             window attention on five layers of every six (their own RoPE base), head_dim from key_length; NEOX
    llama    Llama 3's rope_freqs.weight (per-pair frequency divisors) and linear rope scaling
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import HybridInferError
from .dequantize import dequantize
from .gguf_file import GGUFFile
from .tensor_shapes import OUTPUT, ROPE_FREQS, TOKEN_EMBD

ACTIVATION_KEY = "hybridinfer.ffn_activation"
THRESHOLD_KEY = "hybridinfer.ffn_activation_threshold"
ACTIVATIONS = ("silu", "relu", "fatrelu")
ACTIVATIONS_ALL = ACTIVATIONS + ("gelu",)  # gelu: an architecture's own (gemma3), never a convert key
ARCHITECTURES = ("llama", "minicpm", "qwen2", "qwen3", "gemma3")
NEOX_ARCHITECTURES = ("qwen2", "qwen3", "gemma3")  # RoPE rotates pairs (j, j + rope_dim / 2): llama.cpp's NEOX
GEMMA3_SWA_PATTERN = 6  # llama.cpp: layer i of gemma3 is sliding-window unless i % 6 == 5
GEMMA3_SWA_ROPE_BASE = 10000.0  # llama.cpp: the sliding-window layers' RoPE base
GEMMA3_27B_LAYERS = 62  # llama.cpp: gemma3 with 62 layers is the 27B, whose attention scale is 1/sqrt(n_embd/n_head)


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
    rope_neox: bool = False  # RoPE rotates pairs (j, j + rope_dim / 2) instead of (2j, 2j + 1)
    rope_scale: float = 1.0  # linear rope scaling: every angle multiplied by this (1 / rope.scaling.factor)
    rope_freq_factors: tuple[float, ...] | None = None  # Llama 3's rope_freqs: pair j's frequency divided by [j]
    attention_bias: bool = False  # Q/K/V biases (qwen2)
    qk_norm: bool = False  # RMSNorm over each Q and K head before RoPE (qwen3, gemma3)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before their residual adds (gemma3)
    sliding_window: int = 0  # keys within this many positions of the query, on the sliding-window layers (0: none)
    swa_pattern: int = 0  # layer i is sliding-window when i % swa_pattern < swa_pattern - 1 (0: none is)
    rope_base_swa: float = 10000.0  # the sliding-window layers' RoPE base (their rope scale is 1)
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap) when above 0
    query_scale: float = 1.0  # queries are also multiplied by this (Gemma 3 27B: scale 1/sqrt(n_embd/n_head))

    def is_swa(self, layer: int) -> bool:
        """Whether layer `layer` attends within the sliding window (and rotates with `rope_base_swa`)."""
        return self.sliding_window > 0 and self.swa_pattern > 0 and layer % self.swa_pattern < self.swa_pattern - 1

    def window(self, layer: int) -> int:
        """How many positions (the query's own included) layer `layer` attends to at most; 0: all."""
        return self.sliding_window if self.is_swa(layer) else 0

    def features(self) -> list[str]:
        """What the model adds to LLaMA's layer, in words (`hybridinfer info`)."""
        c = self
        listed = [("Q/K/V biases", c.attention_bias), ("Q/K head norms", c.qk_norm),
                  ("post-attention and post-FFN norms", c.post_norms), ("NEOX RoPE", c.rope_neox),
                  ("rope_freqs", c.rope_freq_factors is not None), (f"rope scale {c.rope_scale:g}", c.rope_scale != 1),
                  (f"sliding window {c.sliding_window} on {c.swa_pattern - 1} of {c.swa_pattern} layers "
                   f"(RoPE base {c.rope_base_swa:g})", c.sliding_window > 0),
                  (f"embeddings scaled by {c.embedding_scale:g}", c.embedding_scale != 1),
                  (f"logit softcap {c.logit_softcap:g}", c.logit_softcap > 0),
                  (f"queries scaled by {c.query_scale:g}", c.query_scale != 1)]
        return [name for name, present in listed if present]

    def rope_settings(self, layer: int) -> tuple[float, float]:
        """(base, scale) of layer `layer`'s RoPE (llama.cpp's per-layer freq_base and freq_scale)."""
        return (self.rope_base_swa, 1.0) if self.is_swa(layer) else (self.rope_base, self.rope_scale)

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
        if n_embd % n_head and f"{arch}.attention.key_length" not in model.metadata:
            meta.fail("attention.head_count", n_head, f"a divisor of the embedding length {n_embd}")
        head_dim = meta.int("attention.key_length", 1, MAX_WIDTH, default=n_embd // n_head)
        if meta.int("attention.value_length", 1, MAX_WIDTH, default=head_dim) != head_dim:
            meta.fail("attention.value_length", model.get(f"{arch}.attention.value_length"),
                      f"the key length {head_dim} (heads of one width)")
        n_head_kv = meta.int("attention.head_count_kv", 1, n_head, default=n_head)
        if n_head % n_head_kv:
            meta.fail("attention.head_count_kv", n_head_kv, f"a divisor of the head count {n_head}")
        rope_dim = meta.int("rope.dimension_count", 2, head_dim, default=head_dim)
        if rope_dim % 2:
            meta.fail("rope.dimension_count", rope_dim, "an even number (RoPE rotates pairs)")
        activation = str(model.get(ACTIVATION_KEY, "relu" if model.is_powerinfer else "silu"))
        if activation not in ACTIVATIONS:
            raise HybridInferError(f"{model.path}: FFN activation {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
        if arch == "gemma3":
            activation = "gelu"  # llama.cpp's gemma3 graph: GELU (tanh approximation), whatever the file says
        n_layer = meta.int("block_count", 1, MAX_LAYERS)
        is_minicpm, is_gemma3 = arch == "minicpm", arch == "gemma3"
        window = meta.int("attention.sliding_window", 1, 2**31 - 1, default=512) if is_gemma3 else 0
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
            embedding_scale=(meta.float("embedding_scale", 12.0) if is_minicpm
                             else math.sqrt(n_embd) if is_gemma3 else 1.0),
            residual_scale=meta.float("residual_scale", 1.4 / math.sqrt(n_layer)) if is_minicpm else 1.0,
            logit_scale=meta.float("logit_scale", 1.0, low=1e-30) if is_minicpm else 1.0,
            rope_neox=arch in NEOX_ARCHITECTURES,
            rope_scale=_rope_scale(meta),
            rope_freq_factors=_rope_freq_factors(model, rope_dim),
            attention_bias=arch == "qwen2",
            qk_norm=arch in ("qwen3", "gemma3"),
            post_norms=is_gemma3,
            sliding_window=window,
            swa_pattern=GEMMA3_SWA_PATTERN if is_gemma3 else 0,
            rope_base_swa=meta.float("rope.freq_base_swa", GEMMA3_SWA_ROPE_BASE, low=1.0),
            logit_softcap=meta.float("final_logit_softcapping", 0.0, absolute=True),
            query_scale=(math.sqrt(head_dim / (n_embd / n_head)) if is_gemma3 and n_layer == GEMMA3_27B_LAYERS
                         else 1.0),
        )


MAX_WIDTH = 2**20  # embedding and FFN widths above this are no model's
MAX_LAYERS = 4096


def _rope_scale(meta: "_Metadata") -> float:
    """1 / rope.scaling.factor for linear scaling (llama.cpp's freq_scale), 1 without; other kinds are refused."""
    kind = meta.text("rope.scaling.type", "none")
    if kind in ("none", ""):
        return 1.0
    if kind != "linear":
        meta.fail("rope.scaling.type", kind, "'linear' or 'none' (other rope scalings are not supported)")
    return 1.0 / meta.float("rope.scaling.factor", 1.0, low=0.0)


def _rope_freq_factors(model: GGUFFile, rope_dim: int) -> tuple[float, ...] | None:
    """Llama 3's rope_freqs.weight (rope_dim / 2,): the divisor of each pair's frequency, or None."""
    if ROPE_FREQS not in model.tensors:
        return None
    tensor = model.tensor(ROPE_FREQS)
    if tensor.shape != (rope_dim // 2,):
        raise HybridInferError(f"{model.path}: tensor {ROPE_FREQS} has shape {tensor.shape}, expected "
                               f"({rope_dim // 2},) from the metadata; the file is corrupt or its metadata is wrong")
    factors = dequantize(tensor).astype(float)
    if not (factors > 0).all():
        raise HybridInferError(f"{model.path}: tensor {ROPE_FREQS} holds values that are not positive; the file is "
                               "corrupt")
    return tuple(factors.tolist())


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

    def text(self, name: str, default: str) -> str:
        return self.model.text(self._full(name), default)

    def int(self, name: str, low: int, high: int, default: int | None = None) -> int:
        return self.model.integer(self._full(name), low, high, default)

    def float(self, name: str, default: float, low: float | None = None, high: float | None = None,
              absolute: bool = False) -> float:
        return self.model.number(self._full(name), default, above=low, below=high, at_least=0.0 if absolute else None)
