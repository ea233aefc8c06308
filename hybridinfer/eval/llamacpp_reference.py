"""llama.cpp's decode speed on the same GGUF file, through the optional `llama-cpp-python` package
(`pip install hybridinfer[llama]`), so the benchmark can print our tokens/s next to llama.cpp's and their ratio.

What is timed: llama.cpp's forward pass for one token at a time after a short prompt, fed through
`Llama.eval([token])` with the next token taken as the argmax of the last logits. There is no sampler,
because llama-bench's `tg` test, the figure llama.cpp reports as its generation speed, is decode without
sampling; the argmax over one row of logits (a zero-copy view) costs microseconds. One untimed warm-up run
comes first, then the median of `repetitions` timed runs is reported. Nothing is downloaded.
llama.cpp's worker threads spin at barriers, so with more threads than idle cores (a busy machine) its rate
collapses (one loaded 2-core machine: 12 tok/s with 2 threads against 58 with 1); compare on an idle machine.
"""

from __future__ import annotations

import ctypes
import statistics
import time

import numpy as np

from ..errors import HybridInferError
from .divergence import kl_rows, log_softmax

PROMPT_TEXT = "The quick brown fox jumps over the lazy dog. " * 8
WARMUP_STEPS = 4
GGML_LOG_LEVEL_ERROR = 4  # ggml's enum: NONE, DEBUG, INFO, WARN, ERROR, CONT


def available() -> bool:
    """True when llama_cpp imports (its shared library loads)."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


def load(path: str, n_threads: int = 2, n_ctx: int = 128):
    """A `llama_cpp.Llama` for `path` on the CPU; a one-line HybridInferError, with llama.cpp's own error
    message when it logged one, if it cannot be loaded."""
    try:
        import llama_cpp
    except Exception as exc:
        raise HybridInferError(f"llama-cpp-python is not usable ({exc}); pip install 'hybridinfer[llama]'") from None
    errors: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # llama.cpp's ERROR lines, which verbose=False would hide
        if level == GGML_LOG_LEVEL_ERROR and text:
            errors.append(text.decode("utf-8", "replace").strip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads,
                               n_threads_batch=n_threads, n_gpu_layers=0, use_mlock=False, verbose=False)
    except Exception as exc:
        detail = "; ".join(e for e in errors if e) or str(exc)
        raise HybridInferError(f"llama.cpp cannot load {path}: {' '.join(detail.split())}") from None
    finally:
        from llama_cpp import _logger
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def decode_rate(path: str, n_threads: int = 2, n_gen: int = 32, n_prompt: int = 8, repetitions: int = 3) -> dict:
    """llama.cpp's greedy decode rate on `path`: {"tokens_per_second", "ms_per_token", "n_threads", "version"}."""
    import llama_cpp
    if n_gen < 1 or n_prompt < 1 or repetitions < 1 or n_threads < 1:
        raise HybridInferError("n_gen, n_prompt, repetitions and n_threads must all be at least 1")
    llm = load(path, n_threads, n_ctx=n_prompt + max(n_gen, WARMUP_STEPS) + 8)
    try:
        prompt = llm.tokenize(PROMPT_TEXT.encode(), add_bos=True)
        prompt = (prompt * (n_prompt // len(prompt) + 1))[:n_prompt]
        n_vocab = llm.n_vocab()

        def run(steps: int) -> float:
            llm.reset()
            llm.eval(prompt)
            start = time.perf_counter()
            for _ in range(steps):
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
                llm.eval([int(logits.argmax())])
            return time.perf_counter() - start

        run(WARMUP_STEPS)
        seconds = statistics.median(run(n_gen) for _ in range(repetitions))
    finally:
        llm.close()
    return {"tokens_per_second": n_gen / seconds, "ms_per_token": seconds / n_gen * 1000,
            "n_threads": n_threads, "version": llama_cpp.__version__}


QUANTIZE_TYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                  "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                  "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0"}


def quantize(source: str, destination: str, kind: str = "q4_k_m", n_threads: int = 2, pure: bool = False) -> None:
    """llama.cpp's quantizer (`llama-quantize`): `source` (any GGUF it reads, quantized ones re-quantized from their
    decoded values) to `destination` as the mix `kind` (a key of QUANTIZE_TYPES); `pure`: every quantizable tensor
    gets the mix's base type (`llama-quantize --pure`)."""
    import llama_cpp
    if kind not in QUANTIZE_TYPES:
        raise HybridInferError(f"unknown llama.cpp quantization {kind!r}; use one of {', '.join(QUANTIZE_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZE_TYPES[kind])
    params.allow_requantize = True
    params.nthread = n_threads
    params.pure = pure

    @llama_cpp.llama_log_callback
    def quiet(level, text, user_data):  # its per-tensor progress lines
        pass

    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    finally:
        from llama_cpp import _logger
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if status != 0:
        raise HybridInferError(f"llama.cpp could not quantize {source} to {kind}")


def logit_agreement(path: str, ours, prompts: list[list[int]], n_threads: int = 2) -> dict:
    """Our next-token distributions against llama.cpp's on the same file, at every position of each prompt (token
    ids, BOS included): {"mean_kl", "max_kl", "top1_agreement", "positions"}. `ours(ids)` gives our logits
    (len(ids), n_vocab) float32, e.g. `engine.logits`."""
    kls, agree = [], []
    for ids, (theirs, _) in zip(prompts, _position_logits(path, prompts, 0, n_threads)):
        mine = np.asarray(ours(ids), dtype=np.float64)
        kls.extend(kl_rows(log_softmax(theirs), log_softmax(mine)))
        agree.extend(theirs.argmax(axis=1) == mine.argmax(axis=1))
    return {"mean_kl": float(np.mean(kls)), "max_kl": float(np.max(kls)), "top1_agreement": float(np.mean(agree)),
            "positions": len(kls)}


def greedy_tokens(path: str, prompts: list[list[int]], n_tokens: int, n_threads: int = 2) -> list[list[int]]:
    """llama.cpp's greedy continuation (argmax of its logits) of each prompt (token ids), n_tokens each."""
    return [continued for _, continued in _position_logits(path, prompts, n_tokens, n_threads)]


def position_logits(path: str, prompts: list[list[int]], n_threads: int = 2) -> list[np.ndarray]:
    """llama.cpp's logits (len(ids), n_vocab) float64 at every position of each prompt (token ids)."""
    return [rows for rows, _ in _position_logits(path, prompts, 0, n_threads)]


def _position_logits(path: str, prompts: list[list[int]], n_tokens: int, n_threads: int):
    """Per prompt (token ids): (llama.cpp's logits at each of its positions (len(ids), n_vocab) float64, the n_tokens
    greedy tokens that follow it). A token at a time: llama-cpp-python's logits_all crashes."""
    import llama_cpp
    llm = load(path, n_threads, n_ctx=max(len(ids) for ids in prompts) + n_tokens + 8)
    n_vocab = llm.n_vocab()

    def step(token: int) -> np.ndarray:
        llm.eval([token])
        return np.array(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)),
                        dtype=np.float64)

    try:
        for ids in prompts:
            llm.reset()
            rows = [step(token) for token in ids]
            continued = [int(rows[-1].argmax())] if n_tokens else []
            while len(continued) < n_tokens:
                continued.append(int(step(continued[-1]).argmax()))
            yield np.stack(rows), continued
    finally:
        llm.close()
