"""The ProSparse recipe end to end, comparing four variants trained with the same budget.

Every variant is trained for `TrainSettings.total_steps` steps (N) on the same batches with the same
learning rate at each step; they share their early steps and differ only in the ProSparse steps:

    dense SiLU   steps 0..N with SiLU (from scratch; or continued training of a pretrained GGUF)
    ReLU         forks from dense SiLU at step S0 (dense_steps): activation substitution SiLU -> ReLU,
                 then continued training to N
    ReLU + L1    forks from ReLU at step S0 + Sa (substitution_steps): progressive sparsity regularization,
                 λ by stages counted from S0 + Sa, to N
    FATReLU      the ReLU + L1 weights with the activation threshold shifted to T (no further training)

From scratch, steps 0..S0 are the dense pre-training that ProSparse starts from. From a GGUF the model is
already pretrained and S0 is usually 0. The FATReLU variant becomes the exported Hugging Face directory;
`metrics.json` in the work directory holds every measured number the report is generated from.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from hybridinfer.text import corpus as corpus_module
from .data import EncodeDocuments, TrainBatches, token_stream, windows
from .evaluate import EvalResult, evaluate
from .export import export_hf_directory, write_sentencepiece_files
from .model import SparseLlamaConfig, SparseLlamaForCausalLM
from .schedule import RegularizationStage, check_stages
from .threshold import DEFAULT_QUANTILES, candidate_thresholds, sweep_thresholds
from .tokenizer_training import BOS_ID, EOS_ID, train_tokenizer
from .train import TrainingRun, TrainSettings, default_device

log = logging.getLogger(__name__)

VARIANTS = ("dense SiLU", "ReLU", "ReLU + L1", "FATReLU")


@dataclass(frozen=True)
class RecipeSettings:
    train: TrainSettings
    l1_stages: tuple[RegularizationStage, ...]  # end steps counted from dense_steps + substitution_steps
    dense_steps: int  # S0: SiLU steps before the activation substitution
    substitution_steps: int  # Sa: ReLU steps before regularization begins
    model: SparseLlamaConfig = SparseLlamaConfig()  # from scratch; ignored with a GGUF start
    start: str = "scratch"  # "scratch" or the path of a LLaMA-architecture GGUF
    extra_text_files: tuple[str, ...] = ()
    include_stdlib: bool = True
    threshold_tolerance: float = 0.01  # largest relative perplexity increase FATReLU's T may cost (validation)
    threshold_quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    validation_tokens: int = 16384  # validation text scored during training (curves)
    sweep_tokens: int = 32768  # validation text scored for each threshold candidate
    test_tokens: int | None = None  # test text scored for the final numbers (None: all of it)
    save_checkpoints: bool = True  # model + optimizer at each phase end, in WORK_DIR/checkpoints

    def check(self) -> None:
        check_stages(list(self.l1_stages))
        regularized = self.train.total_steps - self.dense_steps - self.substitution_steps
        if regularized <= 0:
            raise ValueError(f"dense_steps + substitution_steps ({self.dense_steps} + {self.substitution_steps}) "
                             f"leave no steps for regularization within total_steps {self.train.total_steps}")
        if self.l1_stages[-1].end_step > regularized:
            raise ValueError(f"the last λ stage ends at {self.l1_stages[-1].end_step} regularization steps, "
                             f"but only {regularized} remain after dense and substitution steps")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CorpusTokenizer:
    """What the recipe needs of a tokenizer: encode texts, BOS/EOS ids, and writing its files for export."""
    encode: EncodeDocuments
    bos_id: int | None
    eos_id: int | None
    add_bos: bool  # whether documents start with BOS (they always end with EOS)
    vocab_size: int
    write_hf_files: Callable[[str, int], None]


@dataclass
class RecipeResult:
    metrics: dict
    models: dict[str, SparseLlamaForCausalLM] = field(default_factory=dict)


def variant_summary(model: SparseLlamaForCausalLM, result: EvalResult) -> dict:
    return {"activation": model.config.hidden_act, "threshold": model.config.hidden_act_param,
            "loss": result.loss, "perplexity": result.perplexity, "n_tokens": result.n_tokens,
            "average_sparsity": result.average_sparsity, "sparsity_per_layer": result.sparsity_per_layer,
            "top20_share_per_layer": result.top_neuron_share(0.2)}


def scratch_tokenizer(documents: list[str], vocab_size: int, model_path: str, threads: int) -> CorpusTokenizer:
    processor = train_tokenizer(documents, vocab_size, model_path, num_threads=threads)
    return CorpusTokenizer(encode=processor.encode, bos_id=BOS_ID, eos_id=EOS_ID, add_bos=True,
                           vocab_size=processor.get_piece_size(),
                           write_hf_files=lambda out, max_len: write_sentencepiece_files(model_path, out, max_len))


class Stopwatch:
    """Wall seconds of named stages, in the order they ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def run_recipe(settings: RecipeSettings, out_dir: str, work_dir: str,
               corpus: corpus_module.Corpus | None = None) -> RecipeResult:
    """Build the corpus (unless given) and tokenizer, train the variants, sweep T, evaluate, export; return the metrics.

    Uses torch's current thread count (set it with torch.set_num_threads) and the GPU when there is one."""
    settings.check()
    threads = torch.get_num_threads()
    started, cpu_started, load_at_start = time.perf_counter(), time.process_time(), os.getloadavg()
    clock = Stopwatch()
    os.makedirs(work_dir, exist_ok=True)
    device = default_device()
    torch.manual_seed(settings.train.seed)

    with clock.stage("corpus extraction"):
        if corpus is None:
            corpus = corpus_module.build_corpus(list(settings.extra_text_files), include_stdlib=settings.include_stdlib)
    with clock.stage("tokenizer training and tokenization"):
        if settings.start == "scratch":
            tokenizer = scratch_tokenizer(corpus.train, settings.model.vocab_size,
                                          os.path.join(work_dir, "tokenizer.model"), threads)
            model = SparseLlamaForCausalLM(settings.model.with_activation("silu"))
        else:
            from .pretrained import load_gguf_model  # imports hybridinfer only when a GGUF is used
            model, tokenizer = load_gguf_model(settings.start, settings.train.seq_len)
        model.to(device)
        document_bos = tokenizer.bos_id if tokenizer.add_bos else None
        streams = {split: token_stream(tokenizer.encode, corpus.split(split), document_bos, tokenizer.eos_id)
                   for split in corpus_module.SPLITS}
    seq = settings.train.seq_len
    batches = TrainBatches(streams["train"], seq, settings.train.batch_size, settings.train.seed)
    curve_windows = windows(streams["validation"], seq, settings.validation_tokens)
    sweep_windows = windows(streams["validation"], seq, settings.sweep_tokens)
    test_windows = windows(streams["test"], seq, settings.test_tokens)
    log.info("corpus: %d source files; train/validation/test %d/%d/%d tokens; model %.2fM parameters",
             corpus.n_source_files, *(streams[s].numel() for s in corpus_module.SPLITS), model.n_parameters() / 1e6)

    n_total, s0 = settings.train.total_steps, settings.dense_steps
    s1 = s0 + settings.substitution_steps
    checkpoints = os.path.join(work_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)

    def checkpoint(run: TrainingRun, file_name: str) -> None:
        if settings.save_checkpoints:
            run.save_checkpoint(os.path.join(checkpoints, file_name))

    dense = TrainingRun("dense SiLU", model, settings.train)
    with clock.stage(f"training: dense SiLU, steps 0-{s0}"):
        if s0 > 0:
            dense.train_until(s0, batches, curve_windows, "dense pre-training (SiLU)")
        else:
            dense.validate(curve_windows)
    checkpoint(dense, f"dense-silu-step{s0}.pt")

    relu = dense.fork("ReLU")
    relu.model.set_activation("relu")
    with clock.stage(f"training: ReLU (activation substitution), steps {s0}-{s1}"):
        relu.validate(curve_windows)
        relu.train_until(s1, batches, curve_windows, "activation substitution (ReLU)")
    checkpoint(relu, f"relu-step{s1}.pt")

    regularized = relu.fork("ReLU + L1")
    with clock.stage(f"training: ReLU + L1 (progressive regularization), steps {s1}-{n_total}"):
        regularized.train_until(n_total, batches, curve_windows, "progressive sparsity regularization",
                                l1_stages=list(settings.l1_stages), l1_start_step=s1)
    checkpoint(regularized, f"relu-l1-step{n_total}.pt")
    with clock.stage(f"training: ReLU, steps {s1}-{n_total}"):
        relu.train_until(n_total, batches, curve_windows, "ReLU continued training")
    checkpoint(relu, f"relu-step{n_total}.pt")
    with clock.stage(f"training: dense SiLU, steps {s0}-{n_total}"):
        dense.train_until(n_total, batches, curve_windows, "dense SiLU continued training")
    checkpoint(dense, f"dense-silu-step{n_total}.pt")

    with clock.stage("threshold sweep"):
        thresholds = candidate_thresholds(regularized.model, sweep_windows, settings.threshold_quantiles)
        sweep = sweep_thresholds(regularized.model, sweep_windows, thresholds, settings.threshold_tolerance)
    log.info("threshold sweep: chose T = %g (validation perplexity +%.2f%%, sparsity %.1f%%)", sweep.chosen.threshold,
             100 * sweep.chosen.perplexity_increase, 100 * sweep.chosen.sparsity)
    fatrelu = copy.deepcopy(regularized.model)
    fatrelu.set_activation("fatrelu", sweep.chosen.threshold)

    models = {"dense SiLU": dense.model, "ReLU": relu.model, "ReLU + L1": regularized.model, "FATReLU": fatrelu}
    variants = {}
    with clock.stage("test evaluation"):
        for name, variant_model in models.items():
            variants[name] = variant_summary(variant_model, evaluate(variant_model, test_windows))
            log.info("%s: test perplexity %.3f, sparsity %.2f%%", name, variants[name]["perplexity"],
                     100 * variants[name]["average_sparsity"])
    with clock.stage("export"):
        export_hf_directory(fatrelu, out_dir, tokenizer.write_hf_files, tokenizer.bos_id, tokenizer.eos_id)

    metrics = {
        "settings": settings.to_dict(),
        "device": str(device), "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
        "model_config": fatrelu.config.to_dict(),
        "n_parameters": model.n_parameters(), "n_parameters_without_embeddings": model.n_parameters(False),
        "corpus": {"n_source_files": corpus.n_source_files, "missing_modules": corpus.missing_modules,
                   "documents": {s: len(corpus.split(s)) for s in corpus_module.SPLITS},
                   "characters": {s: corpus.n_chars(s) for s in corpus_module.SPLITS},
                   "tokens": {s: int(streams[s].numel()) for s in corpus_module.SPLITS},
                   "train_epochs": batches.epochs_at(n_total)},
        "eval_tokens": {"curves": int(curve_windows[:, 1:].numel()), "sweep": int(sweep_windows[:, 1:].numel()),
                        "test": int(test_windows[:, 1:].numel())},
        "variants": variants,
        "threshold_sweep": sweep.to_dict(),
        "logs": {run.name: run.log.to_dict() for run in (dense, relu, regularized)},
        "timings_seconds": {name: round(value, 1) for name, value in clock.seconds.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),  # all threads of this process
        "load_average": {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpu_count": os.cpu_count(),
        "out_dir": out_dir,
    }
    with open(os.path.join(work_dir, "metrics.json"), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=1)
    return RecipeResult(metrics, models)
