"""A ProSparse-like Q4_0 model of full LLaMA-2 shapes written straight into GGUF, with its predictors and its
activation frequencies, in minutes (no fp32 checkpoint): the model `make gpu-check` decodes.

How the statistics are made (per layer; x the RMS-normed FFN input, channel 0 a bias channel that the token
embeddings set to a constant and no layer writes to):
    gate = U V + E + b e_0:  U V of rank r (the predictable part), E noise, b a per-neuron bias on channel 0
    neuron i fires with probability about p_i ~ Beta(0.5, 4) (mean 1/9): b_i x_0 = -z_i * std(gate_i . x),
    z_i = the normal quantile of 1 - p_i
    predictor (PowerInfer's fc2 . ReLU(fc1 . x)): fc1 = [V; -V; e_0], fc2 = [U, -U, b] gives U V x + b x_0, the
    gate without its noise, rank 2r + 1 padded to a multiple of 32; threshold -`margin` for recall
    activations file: counts p_i * n_tokens (the frequencies the bias was chosen for)
Every other weight is random Q4_0 blocks made directly as bytes (the output projection Q8_0); the rows of
attn_output and ffn_down that would write channel 0 are zero. The vocabulary is the tests' byte-level SPM one,
padded to n_vocab pieces.

Usage: PYTHONPATH=. python -m tools.synth_gguf OUT_PREFIX [--shape 13b|7b] [--layers N] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from hybridinfer.model_file.config import ACTIVATION_KEY, THRESHOLD_KEY, ModelConfig
from hybridinfer.model_file.fingerprint import Fingerprint
from hybridinfer.model_file.gguf_file import GGUFFile
from hybridinfer.model_file.weight_formats import FORMATS
from hybridinfer.hybrid.activations_file import save_profile
from hybridinfer.runtime.activations import ActivationProfile
from hybridinfer.predictors.file import save_predictors
from hybridinfer.predictors.model import PredictorSet
from tests.tiny_models import add_spm_vocab, spm_vocab

SHAPES = {  # n_embd, n_ff, n_layer, n_head, n_vocab (LLaMA-2)
    "13b": (5120, 13824, 40, 40, 32000),
    "7b": (4096, 11008, 32, 32, 32000),
    "tiny": (256, 768, 2, 8, 512),  # for tests
}
BIAS_CHANNEL = 30.0  # token embeddings' channel 0
RANK = 48  # r: the predictable part's rank
NOISE = 0.3  # std of the gate's unpredictable part, against 1 for the predictable part
PREDICTOR_MARGIN = 0.3
PROFILE_TOKENS = 100_000


def quantize_q4_0(values: torch.Tensor) -> np.ndarray:
    """(rows, cols) float -> (rows, cols // 32 * 18) uint8 GGUF Q4_0 blocks (ggml's rounding), on any device."""
    rows, cols = values.shape
    blocks = values.float().reshape(rows, cols // 32, 32)
    pick = blocks.abs().argmax(dim=-1, keepdim=True)
    extreme = torch.gather(blocks, -1, pick)
    d = extreme / -8
    inverse = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    q = (blocks * inverse + 8.5).to(torch.int32).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    scale = d.to(torch.float16).view(torch.uint8).reshape(rows, cols // 32, 2)
    return torch.cat([scale, packed], dim=-1).reshape(rows, -1).cpu().numpy()


def random_blocks(rows: int, cols: int, qtype: T, scale: float, generator: torch.Generator, device,
                  zero_rows: int = 0) -> np.ndarray:
    """Random Q4_0 / Q8_0 blocks with block scale `scale` as bytes; the first `zero_rows` rows all zero."""
    block_bytes, quant_bytes = FORMATS[qtype].block_bytes, FORMATS[qtype].quant_bytes
    n_blocks = cols // 32
    quants = torch.randint(0, 256, (rows, n_blocks, quant_bytes), generator=generator, device=device,
                           dtype=torch.int32).to(torch.uint8)
    scales = torch.full((rows, n_blocks, 1), scale, device=device).to(torch.float16)
    scales[:zero_rows] = 0
    raw = torch.cat([scales.view(torch.uint8).reshape(rows, n_blocks, 2), quants], dim=-1)
    return raw.reshape(rows, n_blocks * block_bytes).cpu().numpy()


def firing_probabilities(n_layer: int, n_ff: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).beta(0.5, 4.0, (n_layer, n_ff)).clip(1e-4, 0.9)


def gate_and_predictor(p: np.ndarray, n_embd: int, generator: torch.Generator, device):
    """Q4_0 gate bytes (n_ff, n_embd) and the predictor (fc1, fc2) of one layer for firing probabilities p."""
    n_ff = p.shape[0]
    u = torch.randn(n_ff, RANK, generator=generator, device=device) / math.sqrt(RANK)
    v = torch.randn(RANK, n_embd, generator=generator, device=device) / math.sqrt(n_embd)
    gate = u @ v + torch.randn(n_ff, n_embd, generator=generator, device=device) * (NOISE / math.sqrt(n_embd))
    v[:, 0] = 0
    gate[:, 0] = 0
    x0 = BIAS_CHANNEL / math.sqrt(1 + BIAS_CHANNEL ** 2 / n_embd)  # channel 0 after RMSNorm of an embedding row
    z = torch.from_numpy(np.sqrt(2) * _erfinv(1 - 2 * p)).float().to(device)  # normal quantile of 1 - p
    rest = math.sqrt(1 - x0 ** 2 / n_embd)  # RMS 1 over n_embd channels, channel 0's share taken out
    bias = -z * rest * math.sqrt(1 + NOISE ** 2) / x0
    gate[:, 0] = bias
    rank = -(-(2 * RANK + 1) // 32) * 32
    fc1 = torch.zeros(rank, n_embd, device=device)
    fc1[:RANK], fc1[RANK:2 * RANK], fc1[2 * RANK, 0] = v, -v, 1.0
    fc2 = torch.zeros(n_ff, rank, device=device)
    fc2[:, :RANK], fc2[:, RANK:2 * RANK], fc2[:, 2 * RANK] = u, -u, bias
    return quantize_q4_0(gate), fc1.cpu(), fc2.cpu()


def _erfinv(y: np.ndarray) -> np.ndarray:
    from scipy.special import erfinv
    return erfinv(y)


def vocabulary(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = spm_vocab()
    extra = n_vocab - len(tokens)
    return (tokens + [f"▁w{i}" for i in range(extra)], scores + [-100.0 - i for i in range(extra)],
            types + [1] * extra)


def synthesize(out: Path, shape: str = "13b", layers: int | None = None, device: str = "cpu", seed: int = 0,
               progress=print) -> tuple[Path, Path, Path]:
    """Write OUT.gguf, OUT.pred.gguf and OUT.act.gguf; returns their paths."""
    n_embd, n_ff, n_layer, n_head, n_vocab = SHAPES[shape]
    n_layer = layers or n_layer
    generator = torch.Generator(device=device).manual_seed(seed)
    model, pred, act = (out.with_name(out.name + suffix) for suffix in (".gguf", ".pred.gguf", ".act.gguf"))
    writer = gguf.GGUFWriter(str(model), "llama")
    writer.add_name(f"synthetic ProSparse-like {shape} Q4_0")
    writer.add_block_count(n_layer)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    add_spm_vocab(writer, vocabulary(n_vocab))
    writer.add_string(ACTIVATION_KEY, "relu")
    writer.add_float32(THRESHOLD_KEY, 0.0)
    embeddings = torch.randn(n_vocab, n_embd, generator=generator, device=device)
    embeddings[:, 0] = BIAS_CHANNEL
    writer.add_tensor("token_embd.weight", embeddings.half().cpu().numpy())
    writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    writer.add_tensor("output.weight", random_blocks(n_vocab, n_embd, T.Q8_0, 0.001, generator, device),
                      raw_dtype=T.Q8_0)
    p = firing_probabilities(n_layer, n_ff, seed)
    fc1, fc2 = [], []
    small = 0.02 / math.sqrt(n_embd)  # block scale of the random matrices: outputs ~0.1 of the stream
    for i in range(n_layer):
        progress(f"synthesizing layer {i + 1}/{n_layer}")
        b = f"blk.{i}."
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(b + name + ".weight", np.ones(n_embd, np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(b + name + ".weight", random_blocks(n_embd, n_embd, T.Q4_0, small, generator, device),
                              raw_dtype=T.Q4_0)
        writer.add_tensor(b + "attn_output.weight",
                          random_blocks(n_embd, n_embd, T.Q4_0, small, generator, device, zero_rows=1),
                          raw_dtype=T.Q4_0)
        gate, layer_fc1, layer_fc2 = gate_and_predictor(p[i], n_embd, generator, device)
        writer.add_tensor(b + "ffn_gate.weight", gate, raw_dtype=T.Q4_0)
        fc1.append(layer_fc1)
        fc2.append(layer_fc2)
        writer.add_tensor(b + "ffn_up.weight", random_blocks(n_ff, n_embd, T.Q4_0, small, generator, device),
                          raw_dtype=T.Q4_0)
        writer.add_tensor(b + "ffn_down.weight",
                          random_blocks(n_embd, n_ff, T.Q4_0, small, generator, device, zero_rows=1), raw_dtype=T.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    file = GGUFFile(model)
    fingerprint = Fingerprint.of_model(file, ModelConfig.from_gguf(file))
    save_predictors(str(pred), PredictorSet(fc1, fc2, [-PREDICTOR_MARGIN] * n_layer), fingerprint)
    counts = np.round(p * PROFILE_TOKENS).astype(np.int64)
    save_profile(ActivationProfile(counts, PROFILE_TOKENS, fingerprint), act)
    return model, pred, act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output prefix: OUT.gguf, OUT.pred.gguf, OUT.act.gguf")
    parser.add_argument("--shape", default="13b", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for path in synthesize(args.out, args.shape, args.layers, args.device):
        print(path)


if __name__ == "__main__":
    main()
