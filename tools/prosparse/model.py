"""A small LLaMA in plain torch whose FFN activation is selectable: SiLU, ReLU or FATReLU.

Module and parameter names are Hugging Face's LlamaForCausalLM names (`model.layers.0.mlp.gate_proj.weight`
...), and Q/K rows are in HF's rotate-half RoPE order, so `state_dict()` is the exported checkpoint as is.
Semantics are HF LLaMA's: RMSNorm computed in float32, rotate-half RoPE, grouped-query attention with each
KV head serving `n_head // n_kv_head` consecutive query heads, FFN = down(act(gate(x)) * up(x)).

`forward(..., collect_activations=True)` also returns each layer's FFN activation output act(gate(x)),
shape (batch, seq, intermediate_size): the values the L1 sparsity term regularizes and sparsity is measured on
(a neuron is inactive for a token when its act(gate(x)) is exactly zero; the product with up(x) is then zero too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = ("silu", "relu", "fatrelu")


@dataclass(frozen=True)
class SparseLlamaConfig:
    """Hyper-parameters, named as in a Hugging Face LLaMA config.json."""

    vocab_size: int = 4000
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"  # "silu", "relu" or "fatrelu"
    hidden_act_param: float = 0.0  # FATReLU's threshold T (0 for relu and silu)
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, not {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("hidden_size must divide by num_attention_heads, and that by num_key_value_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def with_activation(self, hidden_act: str, threshold: float = 0.0) -> "SparseLlamaConfig":
        return replace(self, hidden_act=hidden_act, hidden_act_param=float(threshold) if hidden_act == "fatrelu" else 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SparseLlamaConfig":
        """Build from a dict (e.g. a config.json), ignoring keys this class does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


class FATReLU(nn.Module):
    """FATReLU_T(v) = v if v >= T else 0, as ProSparse's Hugging Face code (v == T is kept). T = 0 is ReLU."""

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold == 0.0:
            return F.relu(x)  # same values; the faster kernel
        return torch.where(x >= self.threshold, x, torch.zeros_like(x))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


def make_activation(name: str, threshold: float = 0.0) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return FATReLU(0.0)
    if name == "fatrelu":
        return FATReLU(threshold)
    raise ValueError(f"unknown activation {name!r}; use one of {ACTIVATIONS}")


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(config: SparseLlamaConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (seq_len, head_dim), HF layout: the half-size angle table repeated twice."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    table = torch.cat((angles, angles), dim=-1)
    return table.cos(), table.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: SparseLlamaConfig):
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.n_head * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, config: SparseLlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = make_activation(config.hidden_act, config.hidden_act_param)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output, activation output act(gate(x)))."""
        activation = self.act_fn(self.gate_proj(x))
        return self.down_proj(activation * self.up_proj(x)), activation


class DecoderLayer(nn.Module):
    def __init__(self, config: SparseLlamaConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = FeedForward(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        ffn_out, activation = self.mlp(self.post_attention_layernorm(x))
        return x + ffn_out, activation


class Backbone(nn.Module):
    def __init__(self, config: SparseLlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class SparseLlamaForCausalLM(nn.Module):
    """LLaMA decoder with untied output head; parameter names are HF LlamaForCausalLM's."""

    def __init__(self, config: SparseLlamaConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        # output projections of residual branches start smaller, so the residual stream grows slowly with depth
        for name in ("o_proj", "down_proj"):
            if hasattr(module, name):
                nn.init.normal_(getattr(module, name).weight, mean=0.0,
                                std=std / math.sqrt(2 * self.config.num_hidden_layers))

    def set_activation(self, hidden_act: str, threshold: float = 0.0) -> None:
        """Swap every FFN's activation in place (SiLU -> ReLU substitution, ReLU -> FATReLU threshold shift)."""
        self.config = self.config.with_activation(hidden_act, threshold)
        for layer in self.model.layers:
            layer.mlp.act_fn = make_activation(hidden_act, threshold)

    def forward(self, input_ids: torch.Tensor, collect_activations: bool = False):
        """input_ids: (batch, seq) int64. Returns logits (batch, seq, vocab), and with collect_activations
        also the list of per-layer act(gate(x)) tensors, each (batch, seq, intermediate_size)."""
        seq = input_ids.shape[1]
        cos, sin = rope_cos_sin(self.config, seq, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        activations = []
        for layer in self.model.layers:
            x, activation = layer(x, cos, sin)
            if collect_activations:
                activations.append(activation)
        logits = self.lm_head(self.model.norm(x))
        return (logits, activations) if collect_activations else logits

    def n_parameters(self, include_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            total -= self.model.embed_tokens.weight.numel() + self.lm_head.weight.numel()
        return total
