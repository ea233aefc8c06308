"""Synthesize Hugging Face checkpoints laid out exactly like the published activation-sparse LLaMA family.

Variants (file names, config keys and weight formats as published; only the shapes shrink at tiny/small):
  prosparse-llama-2-7b / -13b  SparseLlamaForCausalLM, model_type sparsellama, fatrelu 0.01, sharded fp32
                               safetensors + model.safetensors.index.json (config still says bfloat16)
  relullama-7b                 LlamaForCausalLM, relu, fp32 pytorch_model-0000k-of-0000N.bin + index
  llama-silu                   plain LLaMA-2 (silu), fp16 safetensors shards
  minicpm-1b                   ProSparse-MiniCPM-1B-sft: MiniCPMForCausalLM, no model_type, fatrelu 0.03,
                               muP scales, GQA, tied embeddings, a single bf16 pytorch_model.bin

The tokenizer.model is a real SentencePiece BPE model with LLaMA's options, trained here on docstrings of
fixed standard-library modules (deterministic; cached per vocabulary size). Weights are seeded normals,
generated tensor by tensor in row chunks and streamed to disk, so a full-shape 7B is written with bounded
memory (safetensors: one chunk of ~64 MB; .bin: one shard, as torch.save needs the whole dict).

With the override sparsity_profile="prosparse" (CLI: --prosparse-statistics) the FFNs get ProSparse-like
activation statistics: ~89% of neurons inactive per token in every layer, skewed per-neuron firing
frequencies (hot and cold neurons), and gate pre-activations predictable by a low-rank predictor. A
calibration pass over the layers fixes one gate_proj column per layer before the weights are written; see
tools/synth_profile.py and docs/synthetic-7b.md. Weight values: tools/synth_tensors.py.

Usage: python -m tools.synth_checkpoint OUT_DIR --variant prosparse-llama-2-7b [--size tiny|small|full]
       [--fmt safetensors|bin] [--seed 0] [--shard-bytes N] [--set num_hidden_layers=1 ...]
       [--prosparse-statistics] [--quiet]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path

from hybridinfer.atomic_file import atomic_output
from hybridinfer.text.corpus import docstrings
from tools.prosparse.tokenizer_training import train_tokenizer as train_spm
from tools.synth_profile import SparsityProfile, calibrate_profile, calibration_tokens, profile_from_overrides
from tools.synth_tensors import default_weight_std, tensor_chunks, to_stored

VARIANTS = ("prosparse-llama-2-7b", "prosparse-llama-2-13b", "relullama-7b", "llama-silu", "minicpm-1b")
SIZES = ("tiny", "small", "full")
FORMATS = ("safetensors", "bin")

# ---------------------------------------------------------------------------------------------------------
# Published configurations (full size). Keys and values as in the Hugging Face repositories.

_LLAMA2_7B_SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
                    "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000}
_LLAMA2_13B_SHAPE = {"hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
                     "num_hidden_layers": 40, "num_key_value_heads": 40, "vocab_size": 32000}
_MINICPM_1B_SHAPE = {"hidden_size": 1536, "intermediate_size": 3840, "num_attention_heads": 24,
                     "num_hidden_layers": 52, "num_key_value_heads": 8, "vocab_size": 73440}

_LLAMA2_COMMON = {"bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02, "max_position_embeddings": 4096,
                  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                  "transformers_version": "4.31.0", "use_cache": True}

_PROSPARSE = {**_LLAMA2_COMMON, "architectures": ["SparseLlamaForCausalLM"], "model_type": "sparsellama",
              "hidden_act": "fatrelu", "hidden_act_param": 0.01, "torch_dtype": "bfloat16",
              "auto_map": {"AutoConfig": "configuration_sparsellama.SparseLlamaConfig",
                           "AutoModel": "modeling_sparsellama.SparseLlamaModel",
                           "AutoModelForCausalLM": "modeling_sparsellama.SparseLlamaForCausalLM"}}

_MINICPM = {"architectures": ["MiniCPMForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "fatrelu", "hidden_act_param": 0.03, "initializer_range": 0.1,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_scaling": None,
            "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.36.0",
            "use_cache": True, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
            "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                         "AutoModel": "modeling_minicpm.MiniCPMModel",
                         "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
                         "AutoModelForSeq2SeqLM": "modeling_minicpm.MiniCPMForCausalLM",
                         "AutoModelForSequenceClassification": "modeling_minicpm.MiniCPMForSequenceClassification"}}

MINICPM_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}"
                         "{{'<用户>' + message['content'].strip() + '<AI>'}}"
                         "{% else %}{{message['content'].strip()}}{% endif %}{% endfor %}")

# variant -> (published config without shapes, full shapes, tiny shapes, small shapes,
#             weight format, stored dtype, full-size shard bytes (None = one file), published shard count)
_SPECS = {
    "prosparse-llama-2-7b": (_PROSPARSE, _LLAMA2_7B_SHAPE, "7b", "safetensors", "float32", 5_000_000_000, 6),
    "prosparse-llama-2-13b": (_PROSPARSE, _LLAMA2_13B_SHAPE, "13b", "safetensors", "float32", 5_000_000_000, 11),
    "relullama-7b": ({**_LLAMA2_COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                      "hidden_act": "relu", "torch_dtype": "float32"},
                     _LLAMA2_7B_SHAPE, "7b", "bin", "float32", 10_000_000_000, 3),
    "llama-silu": ({**_LLAMA2_COMMON, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                    "hidden_act": "silu", "torch_dtype": "float16"},
                   _LLAMA2_7B_SHAPE, "7b", "safetensors", "float16", 10_000_000_000, 2),
    "minicpm-1b": (_MINICPM, _MINICPM_1B_SHAPE, "minicpm", "bin", "bfloat16", None, 1),
}

# Reduced shapes per family; tiny keeps the published head/KV-head structure (MiniCPM: GQA 3:1).
_REDUCED_SHAPES = {
    ("7b", "tiny"): {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "num_key_value_heads": 4},
    ("7b", "small"): {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 8,
                      "num_hidden_layers": 4, "num_key_value_heads": 8},
    ("13b", "tiny"): {"hidden_size": 80, "intermediate_size": 216, "num_attention_heads": 5,
                      "num_hidden_layers": 4, "num_key_value_heads": 5},
    ("13b", "small"): {"hidden_size": 320, "intermediate_size": 864, "num_attention_heads": 10,
                       "num_hidden_layers": 5, "num_key_value_heads": 10},
    ("minicpm", "tiny"): {"hidden_size": 96, "intermediate_size": 240, "num_attention_heads": 6,
                          "num_hidden_layers": 3, "num_key_value_heads": 2},
    ("minicpm", "small"): {"hidden_size": 384, "intermediate_size": 960, "num_attention_heads": 12,
                           "num_hidden_layers": 4, "num_key_value_heads": 4},
}
# Trained tokenizer size per model size, and the config vocab_size at reduced sizes (small pads like the
# converter must: tokenizer 1000 < vocab 1024).
TOKENIZER_VOCAB = {"tiny": 600, "small": 1000, "full": 8000}
_REDUCED_VOCAB = {"tiny": 600, "small": 1024}

# Keys of `overrides` that steer the synthesis instead of landing in config.json.
_SYNTH_KEYS = ("gate_bias", "weight_std", "weight_dtype", "sparsity_profile", "gate_rank", "gate_noise")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_SAFETENSORS_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


# ---------------------------------------------------------------------------------------------------------
# Configuration files

def build_config(variant: str, size: str = "tiny", overrides: dict | None = None) -> dict:
    """config.json content of `variant` at `size`, with `overrides` (config keys only) applied."""
    base, full_shape, family, *_ = _spec(variant)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    shape = dict(full_shape) if size == "full" else {**_REDUCED_SHAPES[(family, size)],
                                                     "vocab_size": _REDUCED_VOCAB[size]}
    config = {**base, **shape}
    config.update({k: v for k, v in (overrides or {}).items() if k not in _SYNTH_KEYS})
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError("hidden_size must be a multiple of num_attention_heads")
    if config["num_attention_heads"] % config["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return dict(sorted(config.items()))


def _spec(variant: str) -> tuple:
    if variant not in _SPECS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return _SPECS[variant]


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False}


def tokenizer_files(variant: str) -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json (LLaMA-2's; MiniCPM adds its chat template)."""
    specials = {"bos_token": _added_token("<s>"), "eos_token": _added_token("</s>"), "unk_token": _added_token("<unk>")}
    tokenizer_config = {"add_bos_token": True, "add_eos_token": False, **specials,
                        "clean_up_tokenization_spaces": False, "legacy": False,
                        "model_max_length": 1000000000000000019884624838656, "pad_token": None,
                        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}
    if variant == "minicpm-1b":
        tokenizer_config["chat_template"] = MINICPM_CHAT_TEMPLATE
    return {"tokenizer_config.json": dict(sorted(tokenizer_config.items())),
            "special_tokens_map.json": {k: {kk: vv for kk, vv in v.items() if kk != "__type"}
                                        for k, v in specials.items()}}


def generation_config(config: dict) -> dict:
    return {"_from_model_config": True, "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"], "transformers_version": config["transformers_version"]}


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: SentencePiece BPE with LLaMA's training options, trained on standard-library docstrings

TRAINING_MODULES = ("argparse", "ast", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
                    "datetime", "decimal", "difflib", "email.message", "enum", "fractions", "functools",
                    "gettext", "heapq", "http.client", "inspect", "json", "locale", "logging", "pathlib",
                    "pprint", "random", "re", "shutil", "socket", "statistics", "string", "subprocess",
                    "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest.case", "urllib.parse",
                    "zipfile")


@functools.lru_cache(maxsize=1)
def training_documents() -> tuple[str, ...]:
    """The module, class and function docstrings of TRAINING_MODULES (`text/corpus.docstrings`), read from the
    installed standard library without importing anything."""
    documents = []
    for name in TRAINING_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue
        documents.extend(text for _, text in docstrings(Path(spec.origin).read_text(encoding="utf-8")))
    return tuple(documents)


def default_cache_dir() -> Path:
    """$HYBRIDINFER_SYNTH_CACHE, else $XDG_CACHE_HOME/hybridinfer/synth (default ~/.cache/...)."""
    if os.environ.get("HYBRIDINFER_SYNTH_CACHE"):
        return Path(os.environ["HYBRIDINFER_SYNTH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybridinfer" / "synth"


def train_tokenizer(vocab_size: int, cache_dir: Path | None = None) -> Path:
    """Path of a cached SentencePiece BPE model of `vocab_size` pieces, trained (deterministically, with the
    LLaMA-like options of `tools/prosparse/tokenizer_training.py`) if absent. The cache name carries a hash of the
    training text, so another Python installation trains its own model."""
    documents = training_documents()
    digest = hashlib.sha256("\n\n".join(documents).encode()).hexdigest()[:12]
    cache_dir = Path(cache_dir or default_cache_dir())
    path = cache_dir / f"spm-bpe-{vocab_size}-{digest}.model"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as partial:  # concurrent trainers write identical bytes
            train_spm(list(documents), vocab_size, partial, num_threads=1)
    return path


# ---------------------------------------------------------------------------------------------------------
# Tensors: names and shapes (values: synth_tensors.py)

def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF tensor names and torch shapes (out, in) in state-dict order; no lm_head when embeddings are tied."""
    d, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = d // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [(p + "self_attn.q_proj.weight", (d, d)), (p + "self_attn.k_proj.weight", (kv, d)),
                   (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, d)),
                   (p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d)),
                   (p + "mlp.down_proj.weight", (d, ff)),
                   (p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
    shapes.append(("model.norm.weight", (d,)))
    if not config.get("tie_word_embeddings", False):
        shapes.append(("lm_head.weight", (vocab, d)))
    return shapes


# ---------------------------------------------------------------------------------------------------------
# Writers

def _write_json(path: Path, obj: dict) -> None:
    with atomic_output(path) as partial, open(partial, "wb") as f:
        f.write((json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int, shard_bytes: float
                ) -> list[list[tuple[str, tuple[int, ...]]]]:
    """transformers' greedy rule: start a new shard when adding a tensor would exceed shard_bytes."""
    shards, current, current_bytes = [], [], 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if current and current_bytes + nbytes > shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append((name, shape))
        current_bytes += nbytes
    return shards + [current]


def shard_bytes_for_count(shapes: list[tuple[str, tuple[int, ...]]], itemsize: int, n_shards: int) -> int:
    """Smallest shard limit whose greedy plan has at most `n_shards` shards (the published count at
    reduced sizes, when there are enough tensors)."""
    lo = 1
    hi = sum(math.prod(s) for _, s in shapes) * itemsize
    while lo < hi:
        mid = (lo + hi) // 2
        if len(plan_shards(shapes, itemsize, mid)) <= n_shards:
            hi = mid
        else:
            lo = mid + 1
    return lo


def write_safetensors(path: Path, tensors, dtype: str, seed: int, std: float, gate_bias: float, bar,
                      profile: SparsityProfile | None = None) -> None:
    """Stream `tensors` [(name, shape)] into a safetensors file: header first, then chunk by chunk."""
    itemsize = _DTYPE_BYTES[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_output(path) as partial, open(partial, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name, shape in tensors:
            for chunk in tensor_chunks(name, shape, seed, std, gate_bias, profile):
                to_stored(chunk, dtype).tofile(f)
                bar.update(chunk.size * itemsize)


def write_torch_bin(path: Path, tensors, dtype: str, seed: int, std: float, gate_bias: float, bar,
                    profile: SparsityProfile | None = None) -> None:
    """torch.save of {name: tensor} for one shard (the whole shard is held in memory)."""
    import torch
    torch_dtype = getattr(torch, dtype)
    state = {}
    for name, shape in tensors:
        state[name] = torch.empty(shape, dtype=torch_dtype)
        flat, pos = state[name].view(-1), 0
        for chunk in tensor_chunks(name, shape, seed, std, gate_bias, profile):
            flat[pos:pos + chunk.size] = torch.from_numpy(chunk.reshape(-1))
            pos += chunk.size
            bar.update(chunk.size * _DTYPE_BYTES[dtype])
    with atomic_output(path) as partial, open(partial, "wb") as f:
        torch.save(state, f)  # file object: the archive's inner name does not depend on the temp name


def weight_file_names(fmt: str, n_shards: int) -> tuple[list[str], str | None]:
    """transformers' names: one file unsharded, else numbered shards and an index file."""
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if n_shards == 1:
        return [f"{stem}.{ext}"], None
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    return [f"{stem}-{k:05d}-of-{n_shards:05d}.{ext}" for k in range(1, n_shards + 1)], index


def _check_no_stale_weights(out_dir: Path, keep: set[str]) -> None:
    stale = sorted(p.name for pattern in ("model*.safetensors", "pytorch_model*.bin", "*.index.json")
                   for p in out_dir.glob(pattern) if p.name not in keep)
    if stale:
        raise FileExistsError(f"{out_dir} holds weight files of another layout ({', '.join(stale)}); "
                              "remove them or choose an empty directory")


# ---------------------------------------------------------------------------------------------------------

def synthesize(out_dir, variant: str, *, size: str = "tiny", fmt: str | None = None, seed: int = 0,
               shard_bytes: int | None = None, overrides: dict | None = None, progress: bool = True) -> Path:
    """Write a checkpoint directory shaped like the published `variant` into `out_dir`; return its path.

    size: tiny (hidden 64-96, 2-4 layers, vocab 600), small (a few M params), full (published shapes).
    fmt: "safetensors" or "bin" instead of the published weight format.
    shard_bytes: shard limit; default the published one at full size (7B fp32: 5e9 -> 6 shards), and at
        reduced sizes the smallest limit giving the published file count (7B: 6, 13B: 11, MiniCPM: 1).
    overrides: config.json fields to change or add (e.g. num_hidden_layers, vocab_size, rope_theta), plus
        gate_bias (see tensor_chunks), weight_std (normal std of matrices), weight_dtype
        ("float32" / "float16" / "bfloat16", the stored dtype), sparsity_profile ("prosparse": ProSparse-like
        FFN activation statistics, see SparsityProfile; ReLU/FATReLU variants only, not with gate_bias) and
        gate_noise (the share of gate_proj's energy that is full-rank noise, default 0.07),
        gate_rank (the profile's gate_proj rank, default default_gate_rank(hidden_size): 128 at 7B, 16 at
        small).
    With sparsity_profile the weights are written after a calibration pass (calibrate_profile) that generates
    every layer a second time and runs 512 sample tokens through it. Measured at full 7B shapes with
    num_hidden_layers=2 on one shared core: calibration 12.9 s (1.2 s embedding pass + ~5.8 s per layer), the
    whole synthesis 24 s instead of 9-13 s. Extrapolated to the 32-layer 7B: about +3.5 min (calibration
    ~3.2 min, low-rank gate generation ~0.3 min) on top of writing 27 GB (docs/synthetic-7b.md)."""
    from tqdm import tqdm

    _, _, _, default_fmt, default_dtype, full_shard_bytes, published_shards = _spec(variant)
    overrides = dict(overrides or {})
    fmt = fmt or default_fmt
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    config = build_config(variant, size, overrides)
    dtype = overrides.get("weight_dtype", default_dtype)
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"weight_dtype must be one of {tuple(_DTYPE_BYTES)}, got {dtype!r}")
    std = float(overrides.get("weight_std", default_weight_std(config["hidden_size"], size)))
    gate_bias = float(overrides.get("gate_bias", 0.0))
    tokenizer_vocab = min(TOKENIZER_VOCAB[size], config["vocab_size"])
    profile = profile_from_overrides(overrides, config, gate_bias)

    shapes = tensor_shapes(config)
    itemsize = _DTYPE_BYTES[dtype]
    total = sum(math.prod(s) for _, s in shapes) * itemsize
    if shard_bytes is None:
        if size == "full" or full_shard_bytes is None:
            shard_bytes = full_shard_bytes or math.inf
        else:
            shard_bytes = shard_bytes_for_count(shapes, itemsize, published_shards)
    shards = plan_shards(shapes, itemsize, shard_bytes)
    files, index_name = weight_file_names(fmt, len(shards))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_no_stale_weights(out_dir, set(files) | {index_name})
    tokenizer_model = train_tokenizer(tokenizer_vocab).read_bytes()
    with atomic_output(out_dir / "tokenizer.model") as partial, open(partial, "wb") as f:
        f.write(tokenizer_model)
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config(config))
    for name, content in tokenizer_files(variant).items():
        _write_json(out_dir / name, content)

    if profile is not None:
        profile = calibrate_profile(config, seed, std, profile, calibration_tokens(config, seed, tokenizer_vocab),
                                    dtype, progress=progress)
    writer = write_safetensors if fmt == "safetensors" else write_torch_bin
    with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=f"{variant} ({size})") as bar:
        for file_name, tensors in zip(files, shards):
            writer(out_dir / file_name, tensors, dtype, seed, std, gate_bias, bar, profile)
    if index_name:
        weight_map = {name: file_name for file_name, tensors in zip(files, shards) for name, _ in tensors}
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        _write_json(out_dir / index_name, index)
    return out_dir


def _parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--size", default="tiny", choices=SIZES)
    parser.add_argument("--fmt", choices=FORMATS, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-bytes", type=float, default=None, help="e.g. 5e9")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                        help="config or synthesis override, e.g. --set num_hidden_layers=1 --set gate_bias=-1.2")
    parser.add_argument("--prosparse-statistics", action="store_true",
                        help="ProSparse-like FFN activation statistics (same as --set sparsity_profile=prosparse)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.prosparse_statistics:
        args.overrides.append("sparsity_profile=prosparse")
    out = synthesize(args.out_dir, args.variant, size=args.size, fmt=args.fmt, seed=args.seed,
                     shard_bytes=int(args.shard_bytes) if args.shard_bytes else None,
                     overrides=dict(map(_parse_override, args.overrides)), progress=not args.quiet)
    print(out)


if __name__ == "__main__":
    main()
