"""ProSparse-like activation statistics for tools/synth_checkpoint.py (override sparsity_profile="prosparse"):
~89% of FFN neurons inactive per token in every layer, skewed per-neuron firing frequencies, and gate
pre-activations a low-rank predictor can learn. `SparsityProfile` shapes the weights; `calibrate_profile` fixes
one gate_proj column per layer by running the model over a sample before anything is written. See
docs/synthetic-7b.md.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from tools.synth_tensors import tensor_chunks, to_stored

SPARSITY_PROFILES = ("prosparse",)
_LAYER_PREFIX = "model.layers."
_CALIBRATION_SEQUENCES = 8  # calibration sample: sequences of random token ids, each starting with BOS
_CALIBRATION_LENGTH = 64


def default_gate_rank(hidden_size: int) -> int:
    """Rank of gate_proj's low-rank part: 128 at hidden 4096 (1/32 of the width), at least 16."""
    return max(16, hidden_size // 32)


@dataclass
class SparsityProfile:
    """How the "prosparse" profile shapes the weights; `bias_columns` come from calibrate_profile.

    - Embeddings: std^2 d * N(0,1) per entry (the size of one layer's output) and column 0 = std^2 d sqrt(d),
      so the bias channel holds about half of an embedding's energy and tokens stay distinguishable.
    - o_proj and down_proj row 0 = 0: no layer writes the bias channel (as with gate_bias).
    - gate_proj row i = sqrt(1 - noise_share) * std sqrt(d) * u_i + sqrt(noise_share) * (the default row,
      std * N(0,1)), where u_i = a_i B / |a_i B| is the unit row of a rank-`rank` product (B: rank x d shared
      by the layer, a_i: rank coefficients, both seeded normals). Row norms stay ~ std sqrt(d), so
      pre-activation spreads are those of the default weights; `noise_share` of the energy is full rank.
    - gate_proj column 0 = bias_columns[layer] (the bias channel's coefficient per neuron; 0 when absent):
      chosen so that neuron i fires (pre-activation >= the activation threshold) on a share p_i of the
      calibration tokens, p_i ~ Beta(rate_alpha, rate_beta) drawn per layer (mean 1/9: 89% sparsity, a few
      hot neurons and many cold ones).
    """
    rank: int
    noise_share: float = 0.07
    rate_alpha: float = 0.5
    rate_beta: float = 4.0
    bias_columns: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (n_ff,) float32

    def firing_rates(self, layer: int, n_ff: int, seed: int) -> np.ndarray:
        """Target firing probability of each neuron of `layer` (n_ff,) float64, seeded per layer."""
        rng = np.random.default_rng([seed, zlib.crc32(f"{_LAYER_PREFIX}{layer}.mlp.firing_rates".encode())])
        return rng.beta(self.rate_alpha, self.rate_beta, size=n_ff)

    def gate_generator(self, name: str, shape: tuple[int, ...], seed: int) -> _LowRankRows | None:
        if not name.endswith("mlp.gate_proj.weight"):
            return None
        layer = int(name[len(_LAYER_PREFIX):].split(".")[0])
        return _LowRankRows(name, shape[1], self.rank, seed, self.bias_columns.get(layer))

    def apply(self, name: str, chunk: np.ndarray, start: int, std: float, gate: _LowRankRows | None) -> None:
        """Turn a default chunk (std * N(0,1), rows start..) of tensor `name` into the profile's values."""
        d = chunk.shape[-1]
        if name == "model.embed_tokens.weight":
            chunk *= np.float32(std * d)
            chunk[:, 0] = std * std * d * math.sqrt(d)
        elif name.endswith(("o_proj.weight", "down_proj.weight")) and start == 0:
            chunk[0] = 0.0
        elif gate is not None:
            gate.fill(chunk, start, std, self.noise_share)


class _LowRankRows:
    """Rows of one gate_proj under a SparsityProfile, generated chunk by chunk in order (see there)."""

    def __init__(self, name: str, d: int, rank: int, seed: int, bias_column: np.ndarray | None):
        basis_rng = np.random.default_rng([seed, zlib.crc32((name + "#basis").encode())])
        self.basis = basis_rng.standard_normal((rank, d))  # (rank, d) float64
        self.coefficients = np.random.default_rng([seed, zlib.crc32((name + "#coefficients").encode())])
        self.bias_column = bias_column

    def fill(self, chunk: np.ndarray, start: int, std: float, noise_share: float) -> None:
        n, d = chunk.shape
        low_rank = self.coefficients.standard_normal((n, self.basis.shape[0])) @ self.basis  # (n, d) float64
        low_rank *= math.sqrt(1.0 - noise_share) * std * math.sqrt(d) / np.linalg.norm(low_rank, axis=1,
                                                                                          keepdims=True)
        chunk *= np.float32(math.sqrt(noise_share))
        chunk += low_rank.astype(np.float32)
        chunk[:, 0] = 0.0 if self.bias_column is None else self.bias_column[start:start + n]


def _activation_threshold(config: dict) -> float:
    act = config.get("hidden_act")
    if act == "fatrelu":
        return float(config["hidden_act_param"])
    if act == "relu":
        return 0.0
    raise ValueError(f"sparsity_profile needs a ReLU or FATReLU variant; this one uses hidden_act {act!r}")


def _stored_values(chunk: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of `chunk` as a reader of the stored dtype sees them."""
    if dtype == "float32":
        return chunk
    if dtype == "float16":
        return chunk.astype(np.float16).astype(np.float32)
    return (to_stored(chunk, dtype).astype(np.int32) << 16).view(np.float32)  # bf16 bits in the high half


def _round_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 `values` rounded to `bits` mantissa bits (any exponent)."""
    mantissa, exponent = np.frexp(values.astype(np.float64))
    return np.ldexp(np.round(mantissa * 2.0 ** bits) / 2.0 ** bits, exponent).astype(np.float32)


def _layer_tensor(name: str, shape: tuple[int, ...], seed: int, std: float, profile: SparsityProfile,
                  dtype: str):
    """One whole tensor as float32 torch, as the writer writes it in `dtype` and a reader reads it back."""
    import torch
    out = np.empty(shape, dtype=np.float32)
    flat, pos = out.reshape(-1), 0
    for chunk in tensor_chunks(name, shape, seed, std, profile=profile):
        flat[pos:pos + chunk.size] = _stored_values(chunk, dtype).reshape(-1)
        pos += chunk.size
    return torch.from_numpy(out)


def calibration_tokens(config: dict, seed: int, n_token_ids: int) -> np.ndarray:
    """(sequences, length) int64 token ids of the calibration sample: BOS, then uniform ids in 3..n_token_ids-1."""
    rng = np.random.default_rng([seed, zlib.crc32(b"calibration tokens")])
    ids = rng.integers(3, n_token_ids, size=(_CALIBRATION_SEQUENCES, _CALIBRATION_LENGTH))
    ids[:, 0] = config["bos_token_id"]
    return ids


def calibrate_profile(config: dict, seed: int, std: float, profile: SparsityProfile, token_ids: np.ndarray,
                      dtype: str = "float32", progress: bool = False) -> SparsityProfile:
    """Fill profile.bias_columns layer by layer so that each neuron's firing rate on the sample hits its target.

    The sample (token_ids: (sequences, length)) runs through the model in torch float32 as transformers'
    LLaMA runs it (RMSNorm with rms_norm_eps, rotate-half RoPE, causal attention, grouped KV heads, MiniCPM's
    scale_emb and residual scale when the config has them). Per layer, with the layer's weights generated
    exactly as the writer does (gate_proj column 0 = 0): x = post-attention-normed residual (N, d),
    r = x @ gate^T (N, n_ff), s = x[:, 0] > 0 (the bias channel after the norm). Neuron i fires on token t
    iff s_t c_i + r_ti >= threshold, i.e. iff c_i >= u_ti = (threshold - r_ti) / s_t, so c_i is put midway
    between the k-th and (k+1)-th smallest u_ti, k = round(p_i N): exactly k of the N sample tokens fire
    (BOS positions, alike in every sequence, are left out of the N but run through the layers). The column
    is rounded to 12 mantissa bits, so tiny float differences (another BLAS, thread count) change few of the
    written values, and then to the stored dtype; the weights are used as stored (bf16 for MiniCPM). The FFN
    then runs with the column to give the next layer's input. Memory: one layer's weights (~800 MB at 7B)
    plus the sample. Time at full 7B shapes: ~5.8 s per layer on one core (torch uses more when it may).
    """
    import torch
    from tqdm import tqdm

    threshold = _activation_threshold(config)
    d, n_ff, n_layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim, eps = d // n_head, float(config["rms_norm_eps"])
    residual_scale = config["scale_depth"] / math.sqrt(n_layers) if "scale_depth" in config else 1.0
    n_seq, length = token_ids.shape
    columns: dict[int, np.ndarray] = {}
    calibrated = SparsityProfile(profile.rank, profile.noise_share, profile.rate_alpha, profile.rate_beta, columns)

    wanted = np.unique(token_ids)
    embed_rows = {}
    for chunk_start, chunk in _enumerate_chunks("model.embed_tokens.weight", (config["vocab_size"], d), seed,
                                                std, calibrated):
        for t in wanted[(wanted >= chunk_start) & (wanted < chunk_start + chunk.shape[0])]:
            embed_rows[int(t)] = _stored_values(chunk[t - chunk_start], dtype).copy()
        if chunk_start + chunk.shape[0] > wanted[-1]:
            break
    h = torch.from_numpy(np.stack([embed_rows[int(t)] for t in token_ids.reshape(-1)])).view(n_seq, length, d)
    h = h * float(config.get("scale_emb", 1.0))

    inv_freq = 1.0 / float(config.get("rope_theta", 10000.0)) ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()  # (length, hd)
    mask = torch.full((length, length), float("-inf")).triu(1)

    def rms_norm(v, weight):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rope(v):  # (n_seq, heads, length, hd), rotate-half pairs (j, j + hd/2)
        half = v.shape[-1] // 2
        return v * cos + torch.cat((-v[..., half:], v[..., :half]), -1) * sin

    kv = head_dim * n_kv
    shapes = {"self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d),
              "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, d),
              "mlp.gate_proj.weight": (n_ff, d), "mlp.up_proj.weight": (n_ff, d),
              "mlp.down_proj.weight": (d, n_ff), "input_layernorm.weight": (d,),
              "post_attention_layernorm.weight": (d,)}
    with torch.no_grad():
        for layer in tqdm(range(n_layers), disable=not progress, desc="calibrating sparsity", unit="layer"):
            p = f"{_LAYER_PREFIX}{layer}."
            w = {k: _layer_tensor(p + k, shape, seed, std, calibrated, dtype) for k, shape in shapes.items()}
            x = rms_norm(h, w["input_layernorm.weight"])
            q = (x @ w["self_attn.q_proj.weight"].T).view(n_seq, length, n_head, head_dim).transpose(1, 2)
            k = (x @ w["self_attn.k_proj.weight"].T).view(n_seq, length, n_kv, head_dim).transpose(1, 2)
            v = (x @ w["self_attn.v_proj.weight"].T).view(n_seq, length, n_kv, head_dim).transpose(1, 2)
            q, k = rope(q), rope(k)
            k, v = k.repeat_interleave(n_head // n_kv, 1), v.repeat_interleave(n_head // n_kv, 1)
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, -1) @ v
            h = h + (attn.transpose(1, 2).reshape(n_seq, length, d) @ w["self_attn.o_proj.weight"].T) * residual_scale

            x = rms_norm(h, w["post_attention_layernorm.weight"]).reshape(-1, d)  # (N, d)
            r = x @ w["mlp.gate_proj.weight"].T  # column 0 is 0 here
            s = x[:, 0]
            if not bool((s > 0).all()):
                raise ValueError("the bias channel is not positive after post_attention_layernorm; "
                                 "try another seed or a smaller weight_std")
            u = ((threshold - r) / s[:, None]).double()  # neuron i fires on token t iff c_i >= u[t, i]
            u = u.view(n_seq, length, n_ff)[:, 1:].reshape(-1, n_ff)  # BOS rows are all alike: left out
            column = _firing_columns(u, profile.firing_rates(layer, n_ff, seed))
            columns[layer] = _stored_values(_round_mantissa(column, 12), dtype)
            gate = r + s[:, None] * torch.from_numpy(columns[layer])
            act = torch.where(gate >= threshold, gate, torch.zeros_like(gate))
            out = (act * (x @ w["mlp.up_proj.weight"].T)) @ w["mlp.down_proj.weight"].T
            h = h + out.view(n_seq, length, d) * residual_scale
            del w
    return calibrated


def _enumerate_chunks(name, shape, seed, std, profile):
    start = 0
    for chunk in tensor_chunks(name, shape, seed, std, profile=profile):
        yield start, chunk
        start += chunk.shape[0]


def _firing_columns(u, rates: np.ndarray) -> np.ndarray:
    """Per column i of u (N, n_ff): the value c_i with exactly k_i = round(rates[i] N) entries u[:, i] <= c_i,
    midway between the k_i-th and (k_i+1)-th smallest (beyond the ends by half the outermost gap), so that
    float noise far below the gap leaves the count unchanged. float64 numpy (n_ff,)."""
    import torch
    ordered, _ = torch.sort(u, dim=0)
    padded = torch.cat((2 * ordered[:1] - ordered[1:2], ordered, 2 * ordered[-1:] - ordered[-2:-1]))  # (N+2, n_ff)
    k = torch.from_numpy(np.rint(rates * ordered.shape[0]).astype(np.int64))  # padded[k]: k-th smallest (1-based)
    return (0.5 * (padded.gather(0, k[None]) + padded.gather(0, (k + 1)[None])))[0].numpy()




def profile_from_overrides(overrides: dict, config: dict, gate_bias: float) -> SparsityProfile | None:
    """The (uncalibrated) SparsityProfile the overrides ask for, or None; bad combinations raise here."""
    name = overrides.get("sparsity_profile")
    if name is None:
        if "gate_rank" in overrides or "gate_noise" in overrides:
            raise ValueError("gate_rank and gate_noise only apply with sparsity_profile")
        return None
    if name not in SPARSITY_PROFILES:
        raise ValueError(f"sparsity_profile must be one of {SPARSITY_PROFILES}, got {name!r}")
    if gate_bias:
        raise ValueError("sparsity_profile sets the bias channel itself; leave gate_bias out")
    _activation_threshold(config)
    rank = int(overrides.get("gate_rank", default_gate_rank(config["hidden_size"])))
    if not 1 <= rank < config["hidden_size"]:
        raise ValueError(f"gate_rank must be between 1 and hidden_size - 1, got {rank}")
    noise = float(overrides.get("gate_noise", SparsityProfile.noise_share))
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"gate_noise must be in [0, 1), got {noise}")
    return SparsityProfile(rank, noise)
