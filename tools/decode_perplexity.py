"""Held-out perplexity and KL to dense of a sparsity file through one-token decoding (docs/sparsity.md): per chunk,
its first half is the prompt, then every position `perplexity` scores is produced by decoding one token at a time,
so that the one-token path (CATS's and CHESS's down_t, TEAL's transposes) is what is measured; the dense side is
the same engine with every neuron (`Engine.every_neuron`), decoded the same way.

    PYTHONPATH=. .venv/bin/python tools/decode_perplexity.py -m MODEL.gguf --sparsity-file FILE [-c 512] [--chunks 2]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import hybridinfer
from hybridinfer.text.calibration import calibration_texts


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def decoded_log_probs(engine, chunk: list[int], first: int) -> np.ndarray:
    """(len(chunk) - first - 1, n_vocab): the log-probabilities after chunk[:first + 1] (the prompt), then after
    each longer prefix, each one token decoded."""
    engine.reset()
    rows = [engine.feed(chunk[:first + 1])[0]]
    for end in range(first + 2, len(chunk)):
        rows.append(engine.feed(chunk[:end])[0])
    return log_softmax(np.stack(rows))


def decode_perplexity(engine, tokens: list[int], n_chunk: int, n_chunks: int) -> dict:
    """Perplexity, dense perplexity and mean KL(dense || sparse) over the second half of `n_chunks` chunks."""
    bos = engine.tokenizer.bos_id if engine.tokenizer.bos_id is not None else tokens[0]
    nll, dense_nll, kl = [], [], []
    first = n_chunk // 2
    for index in range(n_chunks):
        chunk = [bos] + tokens[index * n_chunk + 1:(index + 1) * n_chunk]
        targets = np.array(chunk[first + 1:])
        sparse = decoded_log_probs(engine, chunk, first)
        with engine.every_neuron():
            dense = decoded_log_probs(engine, chunk, first)
        at = np.arange(len(targets))
        nll.append(-sparse[at, targets])
        dense_nll.append(-dense[at, targets])
        kl.append((np.exp(dense) * (dense - sparse)).sum(-1))
    return {"perplexity": float(np.exp(np.concatenate(nll).mean())),
            "dense_perplexity": float(np.exp(np.concatenate(dense_nll).mean())),
            "kl_to_dense": float(np.concatenate(kl).mean()), "positions": int(sum(map(len, kl)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--sparsity-file", required=True)
    parser.add_argument("-c", "--ctx", type=int, default=512, help="tokens per chunk")
    parser.add_argument("--chunks", type=int, default=2)
    args = parser.parse_args()
    if args.ctx < 4 or args.chunks < 1:
        sys.exit("error: -c must be at least 4 and --chunks at least 1")
    try:
        engine = hybridinfer.load(args.model, n_ctx=args.ctx, sparsity_file=args.sparsity_file)
    except hybridinfer.HybridInferError as error:
        sys.exit(f"error: {error}")
    tokens = engine.tokenizer.encode("\n\n".join(calibration_texts(None, "test")), add_bos=False)
    if len(tokens) < args.ctx * args.chunks:
        sys.exit(f"error: the held-out text has {len(tokens)} tokens, fewer than {args.chunks} chunks of {args.ctx}")
    start = time.perf_counter()
    result = decode_perplexity(engine, tokens, args.ctx, args.chunks)
    change = 100 * (result["perplexity"] / result["dense_perplexity"] - 1)
    print(f"{engine.mode}: decoded perplexity {result['perplexity']:.3f} ({change:+.1f}%; dense "
          f"{result['dense_perplexity']:.3f}), KL to dense {result['kl_to_dense']:.4f} over {result['positions']} "
          f"positions, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
