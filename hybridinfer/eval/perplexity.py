"""Perplexity of a text, llama.cpp's way, and the quality cost of a sparse mode.

The text is tokenized once and cut into chunks of `n_chunk` tokens; each chunk starts from an empty cache
with BOS in place of its first token, and only the second half of each chunk is scored (every scored token
then has at least n_chunk/2 tokens of context), as llama.cpp's `perplexity` does. With a sparse mode active
(--exact, --predictors or --sparsity-file), the same chunk is also run dense, and the mean KL divergence
KL(dense || sparse), the share of positions where both pick the same top token, and the measured sparsity (the
share of FFN activations that were zero over every evaluated token) are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from ..engine import Engine
from ..errors import HybridInferError
from .divergence import kl_rows, log_softmax


@dataclass
class PerplexityResult:
    perplexity: float
    perplexity_stderr: float
    mean_nll: float
    scored_tokens: int
    chunks: int
    n_chunk: int
    seconds: float
    kl_to_dense: float | None = None  # mean KL(dense || this mode) per scored token, in nats
    top1_agreement: float | None = None  # share of scored positions where dense and this mode agree
    dense_perplexity: float | None = None
    sparsity: float | None = None  # share of FFN activations that were zero, every token, the CPU's sparse layers

    def as_dict(self) -> dict:
        return asdict(self)


def _dense_logits(engine: Engine, tokens: list[int]) -> np.ndarray:
    """The logits with every neuron computed (`Engine.every_neuron`)."""
    with engine.every_neuron():
        return engine.logits(tokens)


def perplexity(engine: Engine, text: str, n_chunk: int = 512, max_chunks: int | None = None,
               on_chunk: Callable[[int, float], None] | None = None) -> PerplexityResult:
    """`on_chunk(index, running_perplexity)` is called after every chunk."""
    if n_chunk < 4 or n_chunk > engine.n_ctx:
        raise HybridInferError(f"the chunk size must be between 4 and the context size {engine.n_ctx}, got {n_chunk}")
    tokens = engine.tokenizer.encode(text, add_bos=False)
    n_chunks = len(tokens) // n_chunk if max_chunks is None else min(max_chunks, len(tokens) // n_chunk)
    if n_chunks < 1:
        raise HybridInferError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_chunk}; "
                               "give a longer text or a smaller -c")
    bos = engine.tokenizer.bos_id if engine.tokenizer.bos_id is not None else tokens[0]
    sparse = engine.sparse_ffn
    if sparse is not None:
        sparse.stats.reset()
    start = time.perf_counter()
    nlls, kls, agree, dense_nlls = [], [], [], []
    first = n_chunk // 2
    for index in range(n_chunks):
        chunk = tokens[index * n_chunk:(index + 1) * n_chunk]
        chunk = [bos] + chunk[1:]
        logp = log_softmax(engine.logits(chunk)[first:-1])  # predictions for chunk[first+1:]
        targets = np.array(chunk[first + 1:])
        nlls.append(-logp[np.arange(len(targets)), targets])
        if sparse is not None:
            dense_logp = log_softmax(_dense_logits(engine, chunk)[first:-1])
            kls.append(kl_rows(dense_logp, logp))
            agree.append(dense_logp.argmax(-1) == logp.argmax(-1))
            dense_nlls.append(-dense_logp[np.arange(len(targets)), targets])
        if on_chunk is not None:
            on_chunk(index, math.exp(np.concatenate(nlls).mean()))
    nll = np.concatenate(nlls)
    mean = float(nll.mean())
    stderr = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    ppl = math.exp(mean)
    result = PerplexityResult(ppl, ppl * stderr, mean, int(len(nll)), n_chunks, n_chunk,
                              round(time.perf_counter() - start, 3))
    if sparse is not None:
        result.kl_to_dense = float(np.concatenate(kls).mean())
        result.top1_agreement = float(np.concatenate(agree).mean())
        result.dense_perplexity = math.exp(float(np.concatenate(dense_nlls).mean()))
        result.sparsity = sparse.stats.sparsity(engine.config.n_ff)
    return result
