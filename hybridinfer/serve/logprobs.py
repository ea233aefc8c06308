"""Log-probabilities for `serve`: scored tokens computed from logits (on the scheduler's thread) and their OpenAI
shapes (in the app): the legacy completions object (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)
and the chat object (`content[]` with `token`, `logprob`, `bytes`, `top_logprobs`).

A log-probability is the log-softmax of the model's logits at that position, before anything the sampler does
(logit_bias, penalties, ignore_eos, top-k/top-p/min-p, temperature): vLLM's default ("raw_logprobs"). Greedy or
sampled, biased or not, the numbers are the model's own, so they compare with `Engine.logits`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..text.detokenizer import StreamingDetokenizer

MAX_LOGPROBS = 20  # most alternatives per position a request may ask for (vLLM's default max_logprobs)
ROWS_AT_ONCE = 64  # prompt positions scored at a time


@dataclass
class TokenScore:
    """One token of a prompt or a completion with its log-probability (None: a prompt's first token, which
    nothing precedes) and the `top` most probable tokens at its position, most probable first."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]]


def score_rows(logits: np.ndarray, chosen: list[int], n_top: int) -> list[TokenScore]:
    """Scores of `chosen[i]` under the float32 logits row `logits[i]` (rows: [T, n_vocab]), each with its `n_top`
    most probable tokens (ties: the lower id first). Rows are taken ROWS_AT_ONCE at a time, bounding the scratch."""
    rows = np.atleast_2d(logits)
    scores = []
    for begin in range(0, len(chosen), ROWS_AT_ONCE):
        scores += _score_block(rows[begin:begin + ROWS_AT_ONCE], chosen[begin:begin + ROWS_AT_ONCE], n_top)
    return scores


def _score_block(rows: np.ndarray, chosen: list[int], n_top: int) -> list[TokenScore]:
    top = rows.max(axis=1, keepdims=True)
    log_total = top[:, 0].astype(np.float64) + np.log(np.exp(rows - top).sum(axis=1, dtype=np.float64))
    picked = rows[np.arange(len(chosen)), chosen].astype(np.float64) - log_total
    best = np.zeros((len(chosen), 0), np.int64)
    if n_top > 0:
        k = min(n_top, rows.shape[1])
        best = np.argpartition(-rows, k - 1, axis=1)[:, :k]
        order = np.lexsort((best, -np.take_along_axis(rows, best, axis=1)), axis=1)
        best = np.take_along_axis(best, order, axis=1)
    return [TokenScore(int(token), float(picked[i]),
                       [(int(t), float(rows[i, t] - log_total[i])) for t in best[i]])
            for i, token in enumerate(chosen)]


def prompt_scores(logits: np.ndarray, prompt: list[int], n_top: int) -> list[TokenScore]:
    """Scores of every token of `prompt` from its logits at every position ([len(prompt), n_vocab], one forward
    pass): token i under position i-1's logits; the first has none (logprob None, no alternatives)."""
    return [TokenScore(prompt[0], None, [])] + score_rows(logits[:-1], prompt[1:], n_top)


def token_string(tokenizer, token_id: int) -> str:
    """A token's text as OpenAI shows it in logprobs: special tokens by name, a piece that is not whole UTF-8 (a
    byte of a longer character) as "bytes:\\xNN..."."""
    raw = tokenizer.piece_bytes(token_id, render_special=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


class TextOffsets:
    """Where each token's text starts in an answer's text: `start` plus the length of what the tokens before it
    decode to (special tokens add nothing; a character split over tokens starts at the first of them)."""

    def __init__(self, tokenizer, start: int = 0, strip_leading_space: bool = False):
        self.detokenizer = StreamingDetokenizer(tokenizer, strip_leading_space=strip_leading_space)
        self.offset = start

    def next(self, token: int) -> int:
        offset = self.offset
        self.offset += len(self.detokenizer.add(token))
        return offset


def legacy_logprobs(tokenizer, scores: list[TokenScore], offsets: TextOffsets) -> dict:
    """OpenAI's completions `logprobs` object for `scores`: `top_logprobs[i]` maps token texts to log-probabilities
    for the alternatives and always holds the chosen token (so up to N+1 entries, as OpenAI's API says)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for score in scores:
        out["tokens"].append(token_string(tokenizer, score.token))
        out["token_logprobs"].append(score.logprob)
        if score.logprob is None:
            out["top_logprobs"].append(None)
        else:
            top = {token_string(tokenizer, t): value for t, value in score.top}
            top.setdefault(token_string(tokenizer, score.token), score.logprob)
            out["top_logprobs"].append(top)
        out["text_offset"].append(offsets.next(score.token))
    return out


def chat_logprobs(tokenizer, scores: list[TokenScore]) -> list[dict]:
    """OpenAI's chat `logprobs.content` entries for `scores` (the end-of-text token, which the message does not
    show, is left out)."""
    def entry(token: int, logprob: float) -> dict:
        return {"token": token_string(tokenizer, token), "logprob": logprob,
                "bytes": list(tokenizer.piece_bytes(token, render_special=True))}

    return [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, value) for t, value in s.top]}
            for s in scores if not tokenizer.is_eog(s.token)]
