"""User text files (a prompt, a text to score, a corpus), read with a bound: `-f /dev/zero` or a multi-GB file is refused in
one line once the bound is reached, instead of filling memory. A pipe (`-f /dev/stdin`) still works."""

from __future__ import annotations

from ..errors import HybridInferError

MAX_PROMPT_BYTES = 32 * 2**20  # far above any context: a million tokens are a few MiB of text
MAX_SCORED_TEXT_BYTES = 256 * 2**20  # perplexity's text: the usual one (wikitext-2's test set) is 1.3 MB, and
#                                      256 MiB would take a CPU days to score
MAX_CORPUS_BYTES = 256 * 2**20  # one calibration corpus file (sparsify, profile, predictors train): runs read
#                                 at most a few million tokens of them


def read_text_file(path: str, what: str, limit: int, errors: str = "strict") -> str:
    """The UTF-8 text of `path` (newlines as Python's text mode reads them), `what` naming it in errors ("the
    prompt file"); refused past `limit` bytes, of which no more than one more is read. `errors` as bytes.decode's
    ("replace": undecodable bytes become U+FFFD)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise HybridInferError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise HybridInferError(f"{what} {path} is larger than {limit // 2**20} MiB, the most hybridinfer reads for "
                               "it; give a smaller file")
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError:
        raise HybridInferError(f"{what} {path} is not UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
