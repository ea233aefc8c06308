"""The Python API: `hybridinfer.load(path)` returns an `Engine` (model, tokenizer, KV cache, generation)."""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from typing import Iterator

import numba
import numpy as np
import torch

from .errors import HybridInferError
from .generation.generate import GenerationChunk, GenerationResult, Timings, stream_generate
from .generation.sampling import Sampler, SamplerSettings
from .generation.stop_strings import stop_list
from .kernels import compile_time, cpu_target
from .kernels import threads as threads_layer
from .kernels.compile_time import Stopwatch
from .model_file.config import ModelConfig
from .model_file.fingerprint import Fingerprint
from .model_file.gguf_file import GGUFFile, require_regular_file
from . import options as check
from .one_at_a_time import OneAtATime, one_at_a_time
from .options import RunOptions, thread_count
from .reference.model import Transformer
from .reference.sparse_ffn import (CalibratedSparseFFN, ExactSparseFFN, PredictedSparseFFN, require_silu_or_gelu,
                                   require_sparse_activation)
from .reference.sparse_inputs import CalibratedSparseInputs
from .reference.weights import load_weights
from .runtime.build import Choices, build_decoder
from .runtime.kv_types import KV_TYPES, KVType, kv_type
from .runtime.memory_estimate import check_run_memory
from .runtime.repack_cache import RepackCache
from .runtime.sparse_ffn import SparseFFN
from .sparsity.thresholds import load_thresholds, path_beside
from .text.vocabulary import tokenizer_from_metadata

DEFAULT_CTX = 4096
PREFILL_CHUNK = 512  # prompt tokens evaluated per forward call, bounding the attention scratch memory


class Engine:
    """One loaded model with its KV cache. `held` is what the cache holds, so a later prompt that starts
    with the same tokens (a chat, a repeated system prompt) only evaluates what is new.

    Threads may share an engine: its calls run one at a time, each waiting for the other threads' (a stream holds
    the engine from its first chunk until its last, or until it is closed). A call from the thread whose stream is
    still open raises HybridInferError: finish or close() the stream first."""

    def __init__(self, path: str, options: RunOptions | None = None, **fields):
        """`options`, or its fields as keywords (which override it): see `options.RunOptions`."""
        cpu_target.require_valid_switch()
        o = self.options = RunOptions.of(options, **fields)
        self.path = check.path_argument(path, "path")
        start, compiled = time.perf_counter(), compile_time.seconds()
        if o.n_threads is not None:
            threads = thread_count(o.n_threads)
            threads_layer.set_torch_threads(threads)
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self._calls = OneAtATime()
        self._fingerprint: Fingerprint | None = None
        self.split = None
        self.startup: dict[str, float | bool] = {}  # ms per stage of the load, compilation apart (`startup_report`)
        with self._stage("open"):
            self.file = GGUFFile(path)
            self.config = ModelConfig.from_gguf(self.file)
            self.tokenizer = tokenizer_from_metadata(self.file.metadata)
        o.check()
        n_ctx = o.n_ctx
        if n_ctx is None:
            n_ctx = min(DEFAULT_CTX, self.config.context_length)
        elif n_ctx == 0:
            n_ctx = self.config.context_length
        self._n_ctx = self.total_ctx = n_ctx  # one sequence's positions; all sequences' together
        if self.tokenizer.vocab_size > self.config.n_vocab:
            raise HybridInferError(f"{self.path}: the vocabulary has {self.tokenizer.vocab_size} tokens but the model "
                                   f"only {self.config.n_vocab} embeddings; the file is corrupt")
        sparsity_file = self._sparsity_file(o)
        self.backend = o.backend or "packed"
        self.cache_types = self._cache_types(o)
        self.repack_ms = 0.0
        self._predictor_cache: RepackCache | None = None
        with self._stage("predictors"):
            self.sparsity = load_thresholds(sparsity_file, self.fingerprint) if sparsity_file else None
            if self.sparsity is not None:  # before the weights are packed (the sparse FFNs check it again)
                require_silu_or_gelu(self.config, f"{sparsity_file} (a sparsity file)")
            teal = self.sparsity is not None and self.sparsity.zeroes_inputs  # TEAL or WINA: transposed weights
            check_run_memory(self.file, self.config, n_ctx, PREFILL_CHUNK,  # before anything large is read
                             float32_weights=self.backend == "reference", transposed=teal and self.backend == "packed",
                             cache_types=self.cache_types)
            predictor_set = self._load_predictors(o.predictors) if o.predictors else None
        exact = o.exact
        with self._stage("weights"):
            if self.backend == "packed":
                placement, device = self._placement(o, predictor_set) if o.hybrid else (None, None)
                if placement is not None and placement.split_ffn_layers and predictor_set is None:
                    exact = True  # split FFNs are sparse, and so then are the CPU layers'
                if exact or predictor_set is not None:
                    require_sparse_activation(self.config)
                choices = Choices(exact, predictor_set, self.sparsity, o.float_activations,
                                  predictor_cache=self._predictor_cache, device=device, gpu_kernels=o.gpu_kernels,
                                  cache_types=self.cache_types)
                self.model = build_decoder(self.file, self.config, n_ctx, choices, placement)
                self.repack_ms = self.model.weights.repack_seconds * 1000
                self.startup["weights_from_cache"] = self.model.weights.from_cache
            else:
                self.model = Transformer(self.config, load_weights(self.file, self.config), n_ctx)
                self.model.sparse = self._reference_sparse(exact, predictor_set, self.sparsity)
                if self.sparsity is not None and self.sparsity.zeroes_inputs:
                    self.model.inputs = CalibratedSparseInputs.of(self.config, self.sparsity)
            self.file.release_copied()
        self.held: list[list[int]] = [[]]  # the tokens each sequence's KV cache holds (one unless hold_sequences)
        if o.warmup:
            with self._stage("warmup"):
                self.warmup()
        self.compile_ms = (compile_time.seconds() - compiled) * 1000
        self.load_ms = (time.perf_counter() - start) * 1000 - self.compile_ms
        self.startup.update(load_ms=self.load_ms, compile_ms=self.compile_ms, repack_ms=self.repack_ms)

    def _cache_types(self, o: RunOptions) -> tuple[KVType, KVType]:
        """The CPU KV cache's types (keys', values'): -ctk's and -ctv's (f16 by default), f32 on the reference
        backend (the oracle's own cache)."""
        if self.backend == "reference":
            return KV_TYPES["f32"], KV_TYPES["f32"]
        head_dim = self.config.head_dim
        return kv_type(o.type_k, "-ctk/--cache-type-k", head_dim), kv_type(o.type_v, "-ctv/--cache-type-v", head_dim)

    def _sparsity_file(self, o: RunOptions) -> str | None:
        """--sparsity-file, or for --sparsity S the file `sparsify --sparsity S` wrote beside the model."""
        if o.sparsity is None:
            return o.sparsity_file
        method = o.sparsity_method or "cats"
        path = path_beside(self.path, o.sparsity, method)
        if not os.path.exists(path):
            raise HybridInferError(f"no sparsity file {path} for --sparsity {o.sparsity}; make it with "
                                   f"`hybridinfer sparsify -m {self.path} --sparsity {o.sparsity} --method {method}`")
        return path

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        with Stopwatch() as watch:
            yield
        self.startup[f"{name}_ms"] = watch.ms

    def startup_report(self) -> dict:
        """Where the load went (open, predictors, weights: repacked or mapped from the cache, warmup; compile
        apart) and this process's peak resident set so far (anonymous and file-backed pages)."""
        return {**self.startup, "peak_rss_bytes": peak_rss_bytes()}

    @one_at_a_time
    def warmup(self) -> None:
        """Evaluate a two-token batch and one token, then forget them: every kernel the prompt and the decoding
        loop call compiles (or loads from the disk cache) now. The statistics of sparse modes start afresh."""
        token = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0
        if self.n_ctx >= 3:
            self.model.forward(torch.tensor([token, token]), 0, all_logits=False)
            self.model.forward(torch.tensor([token]), 2)
        self.held = [[] for _ in self.held]
        if self.sparse_ffn is not None:
            self.sparse_ffn.stats.reset()
        if self.gpu_side is not None:
            self.gpu_side.stats.reset()

    def _placement(self, o: RunOptions, predictor_set):
        """What goes to the GPU side (`hybrid/placement/placement.Placement`), and on which device (cuda when
        present, else the CPU stand-in)."""
        from .hybrid import setup
        device = o.device or setup.default_device()
        if o.split is not None or o.vram_budget is not None:
            require_sparse_activation(self.config, "the hybrid runtime's split FFN (--vram-budget/--split)")
        placement = setup.resolve_placement(self, o.split, o.vram_budget, o.n_gpu_layers, o.activations, device,
                                            predictor_set)
        self.split = placement.split
        return placement, device

    @property
    def gpu_side(self):
        """The GPU side of the hybrid runtime (`hybrid/gpu_side.GPUSide`), or None."""
        return self.model.gpu_side if self.backend == "packed" else None

    @property
    def mode(self) -> str:
        """What computes the FFN, for reports: hybrid, predictors, exact, cats N% or teal N% (a sparsity file's
        method and target) or dense."""
        if self.gpu_side is not None:
            return "hybrid"
        if self.options.predictors or self.options.exact:
            return "predictors" if self.options.predictors else "exact"
        return f"{self.sparsity.method} {100 * self.sparsity.target:g}%" if self.sparsity is not None else "dense"

    @property
    def sparse_ffn(self):
        """The sparse mode in use (packed: `runtime/sparse_ffn.SparseFFN` or TEAL's `runtime/teal.TEALFFN`,
        reference: `reference/sparse_ffn`, `reference/sparse_inputs`), with its `stats` and `predictors`; None when
        the model is dense."""
        part = self.model.sparse_mode if self.backend == "packed" else self.model.sparse or self.model.inputs
        return part if part is not None and part.stats is not None else None

    @contextmanager
    def every_neuron(self) -> Iterator[None]:
        """Every neuron computed for the duration (profiling, the dense side of perplexity): each part's dense twin
        (a split FFN's ignores its predictors: the activation then decides, which equals the dense FFN)."""
        with self._calls.held("every_neuron"):
            with self.model.every_neuron():
                yield

    def _reference_sparse(self, exact: bool, predictor_set, sparsity):
        if sparsity is not None:
            return CalibratedSparseFFN(self.config, sparsity) if not sparsity.zeroes_inputs else None
        if exact:
            return ExactSparseFFN(self.config)
        if predictor_set is not None:
            return PredictedSparseFFN(self.config, predictor_set)
        return None

    def _load_predictors(self, path: str):
        """The predictor set of `path`. The packed backend without a GPU side reads only the packed predictors
        when the repack cache holds them: the set then has the shapes and thresholds but no float weights."""
        from .predictors.file import load_predictors
        require_regular_file(path)  # before the repack cache looks at it
        self._predictor_cache = RepackCache(path, b"", SparseFFN.PREDICTOR_CACHE_MODE)
        cached = False
        if self.backend == "packed" and not self.options.hybrid:
            cached = SparseFFN.holds_predictors(self._predictor_cache.load(), self.config.n_layer)
        return load_predictors(path, self.fingerprint, weights=not cached)

    @property
    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = Fingerprint.of_model(self.file, self.config)
        return self._fingerprint

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def chat_template(self) -> str | None:
        return self.file.get("tokenizer.chat_template")

    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (None: as the GGUF says, like llama.cpp)."""
        add_bos = None if add_bos is None else check.flag(add_bos, "add_bos")
        return self.tokenizer.encode(check.text(text, "text"), add_bos=add_bos)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(check.token_ids(ids, "ids"))

    @one_at_a_time
    def reset(self) -> None:
        self.held = [[] for _ in self.held]

    @one_at_a_time
    def hold_sequences(self, n: int) -> None:
        """Hold `n` sequences (slots) that `feed` and `step` decode, one at a time or together, each with its own
        KV cache of n_ctx // n positions (as llama.cpp's -np shares -c among its slots); what was held is gone."""
        n = check.integer(n, "n")
        total = self.total_ctx
        if n < 1 or n > total:
            raise HybridInferError(f"--parallel must be from 1 to the context size {total}, got {n}")
        if n > 1 and self.backend != "packed":
            raise HybridInferError("several sequences at once run on the packed backend: drop --backend reference "
                                   "or use --parallel 1")
        if n > 1 or self._n_ctx != total:
            self._n_ctx = total // n
            self.model.hold_sequences(n, self._n_ctx)
        self.held = [[] for _ in range(n)]

    @one_at_a_time
    def feed(self, tokens: list[int], sequence: int = 0) -> tuple[np.ndarray, int]:
        """Make `sequence`'s cache hold `tokens`; return the last position's logits (float32 [n_vocab]) and how
        many positions were evaluated. A prefix already in the cache is reused (at least one token is evaluated)."""
        if not tokens:
            raise HybridInferError("nothing to evaluate: the prompt is empty")
        self._check_fits(tokens)
        held = self.held[sequence]
        reuse = min(self.held_prefix(tokens, sequence), len(tokens) - 1)
        del held[reuse:]
        logits = None
        for begin in range(reuse, len(tokens), PREFILL_CHUNK):
            chunk = tokens[begin:begin + PREFILL_CHUNK]
            logits = self.model.forward(torch.tensor(chunk, dtype=torch.long), begin, all_logits=False,
                                        sequence=sequence)
            held.extend(chunk)
        return np.ascontiguousarray(logits[-1].numpy(), dtype=np.float32), len(tokens) - reuse

    @one_at_a_time
    def held_prefix(self, tokens: list[int], sequence: int = 0) -> int:
        """How many of `tokens`, from the first, `sequence`'s cache already holds."""
        return _common_prefix(self.held[sequence], tokens)

    @one_at_a_time
    def step(self, tokens: list[int], sequences: list[int]) -> np.ndarray:
        """One more token for each of several distinct sequences, evaluated together (each weight row read once
        for all); float32 logits (N, n_vocab), row i what `feed` of sequences[i]'s tokens would give."""
        for s in sequences:
            self._check_fits(self.held[s] + [0])
        positions = np.array([len(self.held[s]) for s in sequences])
        logits = self.model.forward_sequences(np.array(tokens, np.int64), positions, np.array(sequences))
        for token, s in zip(tokens, sequences):
            self.held[s].append(int(token))
        return logits.numpy()

    @one_at_a_time
    def logits(self, token_ids: list[int]) -> np.ndarray:
        """float32 [len(token_ids), n_vocab], evaluated from an empty cache."""
        token_ids = check.token_ids(token_ids, "token_ids")
        if not token_ids:
            raise HybridInferError("logits() needs at least one token id")
        self._check_ids(token_ids)
        self._check_fits(token_ids)
        self.held[0] = []
        rows = []
        for begin in range(0, len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[begin:begin + PREFILL_CHUNK]
            rows.append(self.model.forward(torch.tensor(chunk, dtype=torch.long), begin).numpy())
            self.held[0].extend(chunk)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)

    def stream(self, prompt: str | list[int], max_tokens: int = -1, stop: list[str] | None = None,
               timings: Timings | None = None, **sampling) -> Iterator[GenerationChunk]:
        """An iterator of `GenerationChunk`s (text pieces) for a prompt given as text or token ids.
        Sampling options are SamplerSettings' fields (temperature, top_k, top_p, min_p, repeat_penalty, ...).
        Bad options and prompts raise here, before anything is generated. The engine is held from the first chunk
        until the last, or until the iterator is closed (`Engine`)."""
        return self._stream("stream", prompt, max_tokens, stop, timings, sampling)

    def _stream(self, call: str, prompt, max_tokens, stop, timings, sampling: dict) -> Iterator[GenerationChunk]:
        prompt_tokens = self._prompt_tokens(prompt)
        max_tokens, stop = check.integer(max_tokens, "max_tokens"), stop_list(stop)
        check.known_fields(SamplerSettings, sampling, "sampling option")
        sampler = Sampler(SamplerSettings(**sampling))
        return self._held_throughout(call, stream_generate(self, prompt_tokens, sampler, max_tokens, stop, timings))

    def _held_throughout(self, call: str, chunks: Iterator[GenerationChunk]) -> Iterator[GenerationChunk]:
        with self._calls.held(call):
            for chunk in chunks:
                with self._calls.stream_waits():
                    yield chunk

    def generate(self, prompt: str | list[int], max_tokens: int = -1, stop: list[str] | None = None,
                 **sampling) -> GenerationResult:
        timings = self.new_timings()
        pieces, tokens, finish = [], [], "length"
        for chunk in self._stream("generate", prompt, max_tokens, stop, timings, sampling):
            pieces.append(chunk.text)
            if chunk.token is not None:
                tokens.append(chunk.token)
            finish = chunk.finish_reason or finish
        return GenerationResult("".join(pieces), tokens, finish, timings)

    def new_timings(self) -> Timings:
        """Timings that start with this engine's load (and the compilation during it)."""
        return Timings(load_ms=self.load_ms, repack_ms=self.repack_ms, compile_ms=self.compile_ms)

    def _prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt)
        else:
            tokens = check.token_ids(prompt, "prompt", "text (a str) or a list of token ids (ints)")
        if not tokens:
            raise HybridInferError("the prompt is empty; give some text with -p")
        self._check_ids(tokens)
        self._check_fits(tokens)
        return tokens

    def _check_ids(self, tokens: list[int]) -> None:
        bad = [t for t in tokens if not 0 <= t < self.config.n_vocab]
        if bad:
            raise HybridInferError(f"token id {bad[0]} is outside the vocabulary (0..{self.config.n_vocab - 1})")

    def _check_fits(self, tokens: list[int]) -> None:
        if len(tokens) > self.n_ctx:
            raise HybridInferError(
                f"the prompt is {len(tokens)} tokens, longer than the context size {self.n_ctx}; "
                "raise -c/--ctx-size or shorten the prompt")


def peak_rss_bytes() -> int:
    """This process's peak resident set: /proc's VmHWM, which starts afresh at exec (getrusage's maxrss keeps the
    peak of the process that forked this one, a benchmark's for instance); getrusage where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


def load(path: str, options: RunOptions | None = None, **fields) -> Engine:
    """Load a GGUF model. `options` or its fields as keywords (`options.RunOptions`): n_ctx (default: the
    model's context length, at most 4096; 0 = the model's own), n_threads, exact, predictors, sparsity_file or
    sparsity with sparsity_method (SiLU models' CATS or TEAL thresholds), backend, type_k and type_v (the CPU KV
    cache's: "f32", "f16" (default) or "q8_0", as llama.cpp's -ctk/-ctv), float_activations; the hybrid runtime:
    vram_budget (with activations) or split, n_gpu_layers, device, gpu_kernels."""
    return Engine(path, options, **fields)
