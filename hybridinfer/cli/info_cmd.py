"""`hybridinfer info` (what a model file holds) and `hybridinfer fetch` (download the default model or another)."""

from __future__ import annotations

import json
from collections import defaultdict

import click

from ..model_file.config import ModelConfig
from ..default_model import DEFAULT, ensure_model
from ..kernels.cpu_target import SWITCH, TARGET
from ..model_file.gguf_file import GGUFFile


@click.command()
@click.argument("model_path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def info(model_path, as_json):
    """Describe a GGUF model: architecture, sizes, FFN activation, weight types, tokenizer."""
    model = GGUFFile(model_path)
    summary = describe(model)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key == "weight_types":
            for name, stats in value.items():
                click.echo(f"  {name:6s} {stats['tensors']:5d} tensors {stats['bytes'] / 2**20:10.2f} MiB")
        else:
            click.echo(f"{key:22s} {value}")


def describe(model: GGUFFile) -> dict:
    config = ModelConfig.from_gguf(model)
    types = defaultdict(lambda: {"tensors": 0, "bytes": 0})
    for tensor in model.tensors.values():
        types[tensor.type.name]["tensors"] += 1
        types[tensor.type.name]["bytes"] += tensor.n_bytes
    tokens = model.get("tokenizer.ggml.tokens") or []
    return {
        "path": model.path,
        "format": "PowerInfer (PWRI)" if model.is_powerinfer else "GGUF",
        "name": model.get("general.name", ""),
        "architecture": config.architecture,
        "parameters": sum(t.n_elements for t in model.tensors.values()),
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "n_ff": config.n_ff,
        "n_head": config.n_head,
        "n_head_kv": config.n_head_kv,
        "head_dim": config.head_dim,
        "n_vocab": config.n_vocab,
        "context_length": config.context_length,
        "rope_base": config.rope_base,
        "ffn_activation": config.activation,
        "ffn_activation_threshold": config.activation_threshold,
        "tied_embeddings": config.tied_embeddings,
        "features": ", ".join(config.features()) or "none",
        "tokenizer": model.get("tokenizer.ggml.model", "none"),
        "tokenizer_size": len(tokens),
        "chat_template": bool(model.get("tokenizer.chat_template")),
        "total_bytes": sum(t.n_bytes for t in model.tensors.values()),
        "weight_types": dict(types),
        "cpu_kernels": f"{TARGET.name}: {TARGET.instructions} ({SWITCH} picks another)",
    }


@click.command()
@click.argument("name", required=False, default=DEFAULT)
def fetch(name):
    """Download a model into the cache and print its path: NAME is smollm2-135m (the default model,
    SmolLM2-135M-Instruct) or gemma3-270m (Gemma 3 270M, Q4_K_M)."""
    click.echo(ensure_model(name, progress=lambda message: click.echo(message, err=True)))
