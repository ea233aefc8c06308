"""Build the reference activation-sparse model deterministically: fixed corpus, seeds, model and budget.

    .venv/bin/python -m tools.prosparse.build_reference --out models/prosparse-tiny

writes the Hugging Face directory to --out, checkpoints and `metrics.json` to --work-dir (default
OUT.work), and the report `docs/prosparse-recipe.md` + `docs/prosparse-recipe.png`. The same machine type,
thread count and Python (its stdlib is the corpus) rebuild the same bytes.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from .model import SparseLlamaConfig
from .recipe import RecipeSettings, run_recipe
from .report import write_report
from .schedule import RegularizationStage
from .train import TrainSettings

SEQ_LEN = 256
REFERENCE_RECIPE = RecipeSettings(
    model=SparseLlamaConfig(vocab_size=4000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN),
    train=TrainSettings(total_steps=700, batch_size=8, seq_len=SEQ_LEN, peak_lr=2e-3, warmup_steps=30,
                        eval_every=50, seed=0),
    dense_steps=350,
    substitution_steps=70,
    l1_stages=(RegularizationStage(0.1, 40), RegularizationStage(0.5, 140), RegularizationStage(1.5, 280)),
    threshold_tolerance=0.01,
    validation_tokens=8192,
)
DEFAULT_OUT = "models/prosparse-tiny"
DEFAULT_REPORT = "docs/prosparse-recipe.md"


def build_reference(out_dir: str = DEFAULT_OUT, work_dir: str | None = None, report_path: str | None = DEFAULT_REPORT,
                    threads: int = 2, command: str | None = None) -> dict:
    """Run REFERENCE_RECIPE with `threads` CPU threads; write the model, the metrics and the report."""
    torch.set_num_threads(threads)
    result = run_recipe(REFERENCE_RECIPE, out_dir, work_dir or out_dir.rstrip("/") + ".work")
    if report_path:
        write_report(result.metrics, report_path,
                     command or f"python -m tools.prosparse.build_reference --out {out_dir} --threads {threads}")
    return result.metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.prosparse.build_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Hugging Face output directory (default {DEFAULT_OUT})")
    parser.add_argument("--work-dir", help="checkpoints, tokenizer and metrics.json (default OUT.work)")
    parser.add_argument("--report", default=DEFAULT_REPORT, help=f"markdown report path (default {DEFAULT_REPORT}); "
                        "the PNG goes next to it; '' for none")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2; the timing in the report uses it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    metrics = build_reference(args.out, args.work_dir, args.report or None, args.threads)
    fat, dense = metrics["variants"]["FATReLU"], metrics["variants"]["dense SiLU"]
    print(f"wrote {args.out}: FATReLU T={metrics['threshold_sweep']['chosen']['threshold']:g}, sparsity "
          f"{100 * fat['average_sparsity']:.1f}%, test perplexity {fat['perplexity']:.2f} (dense SiLU "
          f"{dense['perplexity']:.2f}); {metrics['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
