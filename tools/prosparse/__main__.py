"""Command line of the ProSparse recipe.

    python -m tools.prosparse train --out models/my-sparse [--start scratch|MODEL.gguf] [--text FILE ...]
        [--steps N --dense-steps S0 --substitution-steps SA --stages 0.1:40,0.5:140,1.5:280] [...]
    python -m tools.prosparse report WORK_DIR/metrics.json --markdown docs/prosparse-recipe.md
    python -m tools.prosparse build-reference --out models/prosparse-tiny

`train` defaults to the reference recipe (build_reference.py); every option overrides one setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

import torch

from . import build_reference
from .recipe import RecipeSettings, run_recipe
from .report import write_report
from .schedule import parse_stages

PRETRAINED_LR = 1e-4  # continued training of a pretrained model wants a far smaller step than training from scratch


def _train_parser(sub) -> argparse.ArgumentParser:
    ref = build_reference.REFERENCE_RECIPE
    p = sub.add_parser("train", help="run the recipe (four variants, threshold sweep, export)",
                       description="Train dense SiLU, ReLU, ReLU + L1 with the same budget, shift the threshold "
                       "(FATReLU), export the FATReLU model as a Hugging Face ProSparse directory.")
    p.add_argument("--out", required=True, help="Hugging Face output directory")
    p.add_argument("--work-dir", help="checkpoints, tokenizer, metrics.json (default OUT.work)")
    p.add_argument("--report", help="also write this markdown report (and a PNG next to it)")
    p.add_argument("--start", default="scratch", help="'scratch' (default) or the path of a LLaMA-architecture GGUF")
    p.add_argument("--text", action="append", default=[], metavar="FILE", help="add a text file to the corpus (repeatable)")
    p.add_argument("--no-stdlib", action="store_true", help="leave the stdlib docstrings out (use only --text files)")
    p.add_argument("--steps", type=int, default=ref.train.total_steps, help="budget of every variant, in steps")
    p.add_argument("--dense-steps", type=int, default=None,
                   help=f"SiLU steps before the ReLU substitution (default {ref.dense_steps} from scratch, 0 from a GGUF)")
    p.add_argument("--substitution-steps", type=int, default=ref.substitution_steps,
                   help="ReLU steps before regularization begins")
    p.add_argument("--stages", default=",".join(f"{s.l1_factor:g}:{s.end_step}" for s in ref.l1_stages),
                   help="λ stages LAMBDA:END,... with END counted from the start of regularization (cumulative); "
                   "the first is the constant warm-up")
    p.add_argument("--batch-size", type=int, default=ref.train.batch_size)
    p.add_argument("--seq-len", type=int, default=ref.train.seq_len)
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {ref.train.peak_lr:g} from scratch, {PRETRAINED_LR:g} from a GGUF)")
    p.add_argument("--warmup-steps", type=int, default=ref.train.warmup_steps)
    p.add_argument("--eval-every", type=int, default=ref.train.eval_every)
    p.add_argument("--seed", type=int, default=ref.train.seed)
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bf16 autocast")
    p.add_argument("--hidden-size", type=int, default=ref.model.hidden_size)
    p.add_argument("--intermediate-size", type=int, default=ref.model.intermediate_size)
    p.add_argument("--layers", type=int, default=ref.model.num_hidden_layers)
    p.add_argument("--heads", type=int, default=ref.model.num_attention_heads)
    p.add_argument("--kv-heads", type=int, default=ref.model.num_key_value_heads)
    p.add_argument("--vocab-size", type=int, default=ref.model.vocab_size)
    p.add_argument("--tolerance", type=float, default=ref.threshold_tolerance,
                   help="largest relative validation perplexity increase FATReLU's threshold may cost (0.01 = 1%%)")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help="cap on the validation/test tokens of every evaluation (for a quick run of a large model)")
    p.add_argument("--no-checkpoints", action="store_true", help="do not save model + optimizer checkpoints")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    return p


def _settings_from(args) -> RecipeSettings:
    ref = build_reference.REFERENCE_RECIPE
    peak_lr = args.lr if args.lr is not None else (ref.train.peak_lr if args.start == "scratch" else PRETRAINED_LR)
    train = dataclasses.replace(ref.train, total_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                                peak_lr=peak_lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
                                seed=args.seed, mixed_precision=not args.no_bf16)
    model = dataclasses.replace(ref.model, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                                intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                                max_position_embeddings=args.seq_len)
    dense_steps = args.dense_steps if args.dense_steps is not None else (ref.dense_steps if args.start == "scratch" else 0)
    settings = dataclasses.replace(ref, train=train, model=model, start=args.start, extra_text_files=tuple(args.text),
                                   include_stdlib=not args.no_stdlib, dense_steps=dense_steps,
                                   substitution_steps=args.substitution_steps,
                                   l1_stages=tuple(parse_stages(args.stages)), threshold_tolerance=args.tolerance,
                                   save_checkpoints=not args.no_checkpoints)
    if args.eval_tokens:
        settings = dataclasses.replace(settings, validation_tokens=min(settings.validation_tokens, args.eval_tokens),
                                       sweep_tokens=min(settings.sweep_tokens, args.eval_tokens),
                                       test_tokens=args.eval_tokens)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.prosparse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    report = sub.add_parser("report", help="regenerate the markdown report and PNG from a metrics.json")
    report.add_argument("metrics", help="metrics.json written by train or build-reference")
    report.add_argument("--markdown", required=True, help="markdown path; the PNG is written next to it")
    sub.add_parser("build-reference", add_help=False, help="build the reference model (see build_reference --help)")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    if args.command == "build-reference":
        return build_reference.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "report":
        with open(args.metrics, encoding="utf-8") as handle:
            metrics = json.load(handle)
        print(*write_report(metrics, args.markdown, "python -m tools.prosparse report " + args.metrics))
        return 0
    try:
        settings = _settings_from(args)
        settings.check()
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    result = run_recipe(settings, args.out, args.work_dir or args.out.rstrip("/") + ".work")
    if args.report:
        write_report(result.metrics, args.report, "python -m tools.prosparse " + " ".join(argv or sys.argv[1:]))
    fat = result.metrics["variants"]["FATReLU"]
    print(f"wrote {args.out}: FATReLU T={result.metrics['threshold_sweep']['chosen']['threshold']:g}, "
          f"sparsity {100 * fat['average_sparsity']:.1f}%, test perplexity {fat['perplexity']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
