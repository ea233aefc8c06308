"""`hybridinfer predictors`: train activation predictors for a model, import PowerInfer's, describe a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import click
from tqdm import tqdm

from ..predictors.collect import collect_from_corpus, split_budgets
from ..predictors.file import METRIC_KEYS, SOURCE_PATH_KEY, TRAIN_KEYS, describe_predictor_file, save_predictors
from ..predictors.metrics import averages, evaluate, model_parameter_count, predictor_share
from ..predictors.powerinfer_import import import_powerinfer
from ..predictors.train import TrainSettings, pick_device, train_predictors

from ..model_file.config import ModelConfig
from ..text.corpus import build_corpus
from ..default_model import ensure_default_model
from ..engine import Engine
from ..errors import HybridInferError
from ..model_file.fingerprint import Fingerprint
from ..model_file.gguf_file import GGUFFile

DEFAULT_TOKENS = 100_000
DEFAULT_CHUNK = 256


@click.group()
def predictors():
    """Activation predictors: train them for a model, import PowerInfer's, describe a predictor file."""


@predictors.command()
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False),
              help="ReLU/FATReLU GGUF model (default: the default model, which is SiLU and will be refused)")
@click.option("--corpus", "corpus_files", multiple=True, type=click.Path(dir_okay=False),
              help="text file added to the built-in corpus (Python stdlib docstrings); repeatable")
@click.option("--no-default-corpus", is_flag=True, help="use only the --corpus files")
@click.option("--tokens", type=int, default=DEFAULT_TOKENS, show_default=True,
              help="tokens to collect: 80% train, 10% validation (early stopping, thresholds), 10% test (report)")
@click.option("--rank", default=None, help="predictor hidden width D, or 'auto' per layer (default: n_embd / 4)")
@click.option("--target-recall", type=float, default=0.95, show_default=True,
              help="held-out activation recall the per-layer thresholds are calibrated for")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="predictor file to write")
@click.option("--workdir", type=click.Path(file_okay=False),
              help="keep the collected activations here (reused by a later run with the same settings); "
                   "default: a temporary directory, deleted afterwards")
@click.option("--chunk-tokens", type=int, default=DEFAULT_CHUNK, show_default=True,
              help="tokens per evaluated chunk (each starts with BOS)")
@click.option("--method", type=click.Choice(["sgd", "ridge"]), default="sgd", show_default=True,
              help="sgd: train the network; ridge: closed-form reduced-rank fit (better with few tokens on wide "
                   "models, seconds per layer)")
@click.option("--epochs", type=int, default=30, show_default=True, help="training epochs at most (early stopping)")
@click.option("--batch-size", type=int, default=512, show_default=True, help="tokens per training step")
@click.option("--lr", type=float, default=None, help="Adam step size (default: 0.08 / sqrt(n_embd))")
@click.option("--device", default="auto", show_default=True, help="training device: auto, cpu, cuda, cuda:N")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--outtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True,
              help="tensor type of the predictor weights")
@click.option("-t", "--threads", "n_threads", type=int, default=None, help="CPU threads (default: all cores)")
@click.option("--force", is_flag=True, help="overwrite an existing output file")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def train(model_path, corpus_files, no_default_corpus, tokens, rank, target_recall, output, workdir, chunk_tokens,
          method, epochs, batch_size, lr, device, seed, outtype, n_threads, force, as_json):
    """Collect activations, train and calibrate one predictor per layer, report held-out metrics."""
    settings = TrainSettings(rank=None, auto_rank=False, target_recall=target_recall, epochs=epochs,
                             batch_size=batch_size, lr=lr, device=device, seed=seed, method=method)
    _parse_rank(rank, settings)
    _check_settings(settings, tokens, chunk_tokens, corpus_files, no_default_corpus)
    _check_output(output, force)
    pick_device(device)  # refuse a bad --device before the long part
    model_path = model_path or str(ensure_default_model(progress=lambda message: click.echo(message, err=True)))
    config = ModelConfig.from_gguf(GGUFFile(model_path))
    if config.activation == "silu":
        raise HybridInferError(f"{model_path} uses SiLU, whose neurons are never exactly inactive, so there is "
                               "nothing to predict; give a ReLU or FATReLU model with -m")
    engine = Engine(model_path, n_ctx=min(chunk_tokens, config.context_length), n_threads=n_threads)
    corpus = build_corpus(list(corpus_files), include_stdlib=not no_default_corpus)
    label = _corpus_label(corpus_files, no_default_corpus)

    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="hybridinfer-predictors-")
    try:
        started = time.perf_counter()
        with tqdm(total=tokens, unit="tok", desc="collecting", disable=as_json) as bar:
            collection, reused = collect_from_corpus(engine, corpus, tokens, workdir, chunk_tokens, label, bar.update)
        collect_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with tqdm(total=config.n_layer, unit="layer", desc="training", disable=as_json) as bar:
            def advance(report):
                bar.set_postfix(rank=report.rank, sparsity=f"{report.validation_sparsity:.3f}")
                bar.update()

            predictor_set, reports = train_predictors(collection, settings, progress=advance)
        train_seconds = time.perf_counter() - started
        layers = evaluate(predictor_set, collection, "test")
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    mean = averages(layers)
    model_parameters = model_parameter_count(engine.file)
    metadata = {
        METRIC_KEYS["recall"]: [m.recall for m in layers],
        METRIC_KEYS["predicted_sparsity"]: [m.predicted_sparsity for m in layers],
        METRIC_KEYS["true_sparsity"]: [m.true_sparsity for m in layers],
        METRIC_KEYS["prior_recall"]: [m.prior_recall for m in layers],
        METRIC_KEYS["tokens"]: collection.rows["test"],
        TRAIN_KEYS["target_recall"]: target_recall,
        TRAIN_KEYS["tokens"]: collection.rows["train"],
        TRAIN_KEYS["validation_tokens"]: collection.rows["validation"],
        TRAIN_KEYS["corpus"]: label,
        TRAIN_KEYS["seconds"]: train_seconds,
    }
    save_predictors(output, predictor_set, Fingerprint.of_model(engine.file, config), metadata, "trained", outtype)
    summary = {
        "output": output,
        "model": model_path,
        "tokens": dict(collection.rows),
        "reused_collection": reused,
        "target_recall": target_recall,
        "device": str(pick_device(device)),
        "collect_seconds": collect_seconds,
        "train_seconds": train_seconds,
        "layers": [{**m.as_dict(), "activation_rate": r.activation_rate, "validation_sparsity": r.validation_sparsity,
                    "validation_recall_at_zero": r.validation_recall_at_zero, "steps": r.steps,
                    "ranks_tried": {str(k): v for k, v in r.tried.items()}} for m, r in zip(layers, reports)],
        "average": mean,
        "predictor_parameters": predictor_set.n_params,
        "model_parameters": model_parameters,
        "predictor_share": predictor_share(predictor_set, model_parameters),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    _print_table(summary["layers"], mean)
    click.echo(f"predictors: {predictor_set.n_params:,} parameters, {100 * summary['predictor_share']:.2f}% of the "
               f"model's {model_parameters:,}; test tokens {collection.rows['test']}, train {collection.rows['train']}")
    click.echo(f"wrote {output} (collect {collect_seconds:.1f} s{', reused' if reused else ''}, "
               f"train {train_seconds:.1f} s on {summary['device']})", err=True)


@predictors.command(name="import")
@click.argument("source", type=click.Path())
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False),
              help="the model the predictors are for (default: SOURCE itself when it is a PowerInfer GGUF)")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="predictor file to write")
@click.option("--outtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing output file")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def import_(source, model_path, output, outtype, force, as_json):
    """Import PowerInfer predictors: a directory of model_<layer>.pt (+ config.json) or a PowerInfer GGUF."""
    _check_output(output, force)
    if model_path is None:
        if os.path.isdir(source):
            raise HybridInferError("give the model these predictors are for with -m MODEL.gguf")
        model_path = source
    model = GGUFFile(model_path)
    config = ModelConfig.from_gguf(model)
    fingerprint = Fingerprint.of_model(model, config)
    predictor_set, kind = import_powerinfer(source, config, fingerprint)
    save_predictors(output, predictor_set, fingerprint, {SOURCE_PATH_KEY: os.path.abspath(source)},
                    kind, outtype)
    model_parameters = model_parameter_count(model)
    summary = {"output": output, "source": source, "source_kind": kind, "model": model_path,
               "n_layer": predictor_set.n_layer, "ranks": predictor_set.ranks,
               "thresholds": predictor_set.thresholds, "predictor_parameters": predictor_set.n_params,
               "model_parameters": model_parameters,
               "predictor_share": predictor_share(predictor_set, model_parameters)}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {output}: {predictor_set.n_layer} layers from {kind} {source}, ranks "
               f"{_range(predictor_set.ranks)}, threshold {_range(predictor_set.thresholds)}, "
               f"{predictor_set.n_params:,} parameters ({100 * summary['predictor_share']:.2f}% of the model)")


@predictors.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def info(path, as_json):
    """Describe a predictor file: layers, ranks, thresholds, stored held-out metrics, the model it is for."""
    summary = describe_predictor_file(path)
    if as_json:
        click.echo(json.dumps(summary))
        return
    for key, value in summary.items():
        if key not in ("layers", "average"):
            click.echo(f"{key:22s} {value}")
    if summary["layers"] and "recall" in summary["layers"][0]:
        _print_table(summary["layers"], summary["average"])
    else:
        click.echo(f"{'ranks':22s} {_range([m['rank'] for m in summary['layers']])}")
        click.echo(f"{'thresholds':22s} {_range([m['threshold'] for m in summary['layers']])}")


def _parse_rank(rank: str | None, settings) -> None:
    if rank is None:
        return
    if rank.strip().lower() == "auto":
        settings.auto_rank = True
        return
    try:
        settings.rank = int(rank)
    except ValueError:
        raise HybridInferError(f"--rank must be a positive integer or 'auto', got {rank!r}") from None
    if settings.rank < 1:
        raise HybridInferError(f"--rank must be a positive integer or 'auto', got {rank!r}")


def _check_settings(settings, tokens: int, chunk_tokens: int, corpus_files, no_default_corpus: bool) -> None:
    if not 0 < settings.target_recall <= 1:
        raise HybridInferError(f"--target-recall must be in (0, 1], got {settings.target_recall}")
    if chunk_tokens < 2:
        raise HybridInferError(f"--chunk-tokens must be at least 2, got {chunk_tokens}")
    for name, value in (("--epochs", settings.epochs), ("--batch-size", settings.batch_size)):
        if value < 1:
            raise HybridInferError(f"{name} must be positive, got {value}")
    if settings.lr is not None and settings.lr <= 0:
        raise HybridInferError(f"--lr must be positive, got {settings.lr}")
    split_budgets(tokens)
    for path in corpus_files:
        if not os.path.isfile(path):
            raise HybridInferError(f"corpus file not found: {path}")
    if no_default_corpus and not corpus_files:
        raise HybridInferError("--no-default-corpus needs at least one --corpus FILE")


def _check_output(output: str, force: bool) -> None:
    if os.path.exists(output) and not force:
        raise HybridInferError(f"{output} exists; pass --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise HybridInferError(f"cannot write {output}: the directory {directory} does not exist")


def _corpus_label(corpus_files, no_default_corpus: bool) -> str:
    parts = [] if no_default_corpus else ["python-stdlib-docstrings"]
    for path in corpus_files:
        stat = os.stat(path)
        parts.append(f"{os.path.abspath(path)}:{stat.st_size}:{int(stat.st_mtime)}")
    return ";".join(parts)


def _range(values) -> str:
    low, high = min(values), max(values)
    fmt = (lambda v: f"{v}") if all(isinstance(v, int) for v in values) else (lambda v: f"{v:.4g}")
    return fmt(low) if low == high else f"{fmt(low)}..{fmt(high)}"


def _print_table(layers: list[dict], mean: dict) -> None:
    click.echo(f"{'layer':>5} {'rank':>5} {'threshold':>10} {'recall':>7} {'pred.sparsity':>13} {'true sparsity':>13} "
               f"{'prior recall':>12}")
    for m in layers:
        prior = "" if m.get("prior_recall") is None else f"{m['prior_recall']:.4f}"
        click.echo(f"{m['layer']:5d} {m['rank']:5d} {m['threshold']:10.4f} {m['recall']:7.4f} "
                   f"{m['predicted_sparsity']:13.4f} {m['true_sparsity']:13.4f} {prior:>12}")
    prior = "" if mean.get("prior_recall") is None else f"{mean['prior_recall']:.4f}"
    click.echo(f"{'mean':>5} {mean['rank']:5.0f} {'':>10} {mean['recall']:7.4f} {mean['predicted_sparsity']:13.4f} "
               f"{mean['true_sparsity']:13.4f} {prior:>12}")
