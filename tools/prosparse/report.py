"""The recipe's report, generated from `metrics.json`: a markdown page and a PNG of the training curves and λ.

Every figure on the page is read from the metrics the build measured; nothing is typed by hand. Regenerate
with `python -m tools.prosparse report WORK_DIR/metrics.json --markdown docs/prosparse-recipe.md`.
"""

from __future__ import annotations

import os

from hybridinfer.atomic_file import atomic_output

SPARSITY_TARGET = 0.85  # average FATReLU sparsity the reference model must reach
PERPLEXITY_TOLERANCE = 0.10  # FATReLU perplexity at most this much above dense SiLU's
COLORS = {"dense SiLU": "tab:blue", "ReLU": "tab:orange", "ReLU + L1": "tab:green", "FATReLU": "tab:red"}


def moving_average(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def _own_points(history: dict, key: str) -> list[dict]:
    """The points a run measured itself: a forked run's history before its fork belongs to its parent."""
    start = history.get("forked_at") or 0
    return [p for p in history[key] if p["step"] >= start]


def plot_training(metrics: dict, png_path: str) -> None:
    """Four panels sharing the step axis: losses (train, smoothed, and validation), validation loss relative to
    dense SiLU, λ with the L1 term, validation sparsity (with the final FATReLU point)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    logs = metrics["logs"]
    fig, (ax_loss, ax_delta, ax_lambda, ax_sparsity) = plt.subplots(
        4, 1, figsize=(9, 12), sharex=True, gridspec_kw={"height_ratios": [3, 1.5, 1.3, 1.5]})
    width = max(1, metrics["settings"]["train"]["eval_every"] // 2)
    dense_validation = {p["step"]: p["loss"] for p in logs["dense SiLU"]["validation"]}
    lowest = []
    for name, history in logs.items():
        color = COLORS.get(name)
        train, validation = _own_points(history, "train"), _own_points(history, "validation")
        smoothed = moving_average([p["loss"] for p in train], width)
        lowest += smoothed[width:] + [p["loss"] for p in validation]
        ax_loss.plot([p["step"] for p in train], smoothed, color=color, alpha=0.45, linewidth=1,
                     label=f"{name}: train (moving average of {width})")
        ax_loss.plot([p["step"] for p in validation], [p["loss"] for p in validation], "o-", color=color,
                     markersize=3, label=f"{name}: validation")
        if name != "dense SiLU":
            paired = [p for p in validation if p["step"] in dense_validation]
            ax_delta.plot([p["step"] for p in paired], [p["loss"] - dense_validation[p["step"]] for p in paired],
                          "o-", color=color, markersize=3, label=name)
        ax_sparsity.plot([p["step"] for p in validation], [100 * p["sparsity"] for p in validation], "o-",
                         color=color, markersize=3, label=name)
    chosen, n_total = metrics["threshold_sweep"]["chosen"], metrics["settings"]["train"]["total_steps"]
    ax_sparsity.plot([n_total], [100 * chosen["sparsity"]], "*", color=COLORS["FATReLU"], markersize=12,
                     label=f"FATReLU, T = {chosen['threshold']:g} (threshold sweep)")
    regularized = logs.get("ReLU + L1")
    if regularized:
        ax_lambda.plot([p["step"] for p in regularized["train"]], [p["l1_factor"] for p in regularized["train"]],
                       color=COLORS["ReLU + L1"], label="λ (L1 factor)")
        ax_l1 = ax_lambda.twinx()
        points = [p for p in regularized["train"] if p["l1_factor"] > 0]
        ax_l1.plot([p["step"] for p in points], moving_average([p["l1"] for p in points], width), color="gray",
                   linewidth=0.8, label="L1 term: mean activation output (moving average)")
        ax_l1.set_ylabel("L1 term")
        ax_l1.legend(loc="center right", fontsize=8)
    for phase_step in _phase_boundaries(metrics):
        for axis in (ax_loss, ax_delta, ax_lambda, ax_sparsity):
            axis.axvline(phase_step, color="black", linewidth=0.6, linestyle=":")
    low = min(lowest)
    ax_loss.set_ylim(low - 0.2, low + 3.0)
    ax_loss.set_ylabel("next-token loss (nats)")
    ax_loss.legend(fontsize=7, ncol=2)
    ax_loss.set_title("ProSparse recipe: training curves (dotted lines: substitution and regularization start)")
    ax_delta.axhline(0.0, color=COLORS["dense SiLU"], linewidth=0.8)
    ax_delta.set_ylabel("Δ validation loss\nvs dense SiLU (nats)")
    ax_delta.legend(fontsize=8)
    ax_lambda.set_ylabel("λ")
    ax_lambda.legend(loc="center left", fontsize=8)
    ax_sparsity.set_ylabel("validation sparsity (%)")
    ax_sparsity.set_xlabel("step")
    ax_sparsity.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=110, format="png")
    plt.close(fig)


def _phase_boundaries(metrics: dict) -> list[int]:
    s = metrics["settings"]
    return sorted({s["dense_steps"], s["dense_steps"] + s["substitution_steps"]} - {0})


def _pct(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def render_markdown(metrics: dict, png_name: str, command: str) -> str:
    s, variants, sweep = metrics["settings"], metrics["variants"], metrics["threshold_sweep"]
    train, model = s["train"], metrics["model_config"]
    dense, fat = variants["dense SiLU"], variants["FATReLU"]
    n_total, s0, sa = train["total_steps"], s["dense_steps"], s["substitution_steps"]
    ppl_ratio = fat["perplexity"] / dense["perplexity"] - 1
    corpus = metrics["corpus"]
    lines = [
        "# The ProSparse recipe at small scale",
        "",
        f"Generated by `{command}` from the numbers that build measured (`metrics.json`); do not edit by hand.",
        "",
        "## Result",
        "",
        f"- Average activation sparsity of the exported FATReLU model on held-out (test) text: "
        f"**{_pct(fat['average_sparsity'])}** (target >= {_pct(SPARSITY_TARGET, 0)}: "
        f"{'met' if fat['average_sparsity'] >= SPARSITY_TARGET else 'not met'}).",
        f"- Its test perplexity: **{fat['perplexity']:.2f}**, {_signed_pct(ppl_ratio)} against the dense SiLU model "
        f"trained with the same budget ({dense['perplexity']:.2f}) (target within {_pct(PERPLEXITY_TOLERANCE, 0)}: "
        f"{'met' if ppl_ratio <= PERPLEXITY_TOLERANCE else 'not met'}).",
        f"- FATReLU threshold T = {sweep['chosen']['threshold']:g}, chosen on validation text "
        f"(largest T costing at most {_pct(sweep['tolerance'])} perplexity over T = 0).",
        f"- Build time: {metrics['total_seconds'] / 60:.1f} min wall on {metrics['device'].upper()} with "
        f"{metrics['threads']} threads (torch {metrics['torch']}), on a {metrics['cpu_count']}-CPU machine shared with "
        f"other work: the build used {metrics['cpu_seconds'] / 60:.1f} CPU-minutes, i.e. it had "
        f"{metrics['cpu_seconds'] / metrics['total_seconds']:.2f} CPUs on average (1-minute load average "
        f"{metrics['load_average']['start'][0]:.2f} at start, {metrics['load_average']['end'][0]:.2f} at end).",
        "",
        "| variant | test perplexity | vs dense SiLU | average sparsity | top-20% neurons' share of activations |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in variants.items():
        share = "— (SiLU: no zeros)" if v["activation"] == "silu" else _pct(_mean(v["top20_share_per_layer"]))
        lines.append(f"| {name} | {v['perplexity']:.2f} | {_signed_pct(v['perplexity'] / dense['perplexity'] - 1)} "
                     f"| {_pct(v['average_sparsity'])} | {share} |")
    lines += [
        "",
        f"![training curves and λ]({png_name})",
        "",
        "## Per layer (test text)",
        "",
        "Sparsity is the share of zero FFN activation outputs act(gate(x)) over test tokens and neurons. "
        "Skew is the share of all activations (non-zero outputs) that the 20% most frequently active neurons "
        "of the layer account for (20% would mean no skew).",
        "",
        "| layer | sparsity ReLU | sparsity ReLU + L1 | sparsity FATReLU | top-20% share ReLU | top-20% share FATReLU |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(model["num_hidden_layers"]):
        lines.append(
            f"| {i} | {_pct(variants['ReLU']['sparsity_per_layer'][i])} | "
            f"{_pct(variants['ReLU + L1']['sparsity_per_layer'][i])} | {_pct(fat['sparsity_per_layer'][i])} | "
            f"{_pct(variants['ReLU']['top20_share_per_layer'][i])} | {_pct(fat['top20_share_per_layer'][i])} |")
    lines += [
        "",
        "## Threshold sweep (validation text)",
        "",
        "Candidates are quantiles of the positive activation outputs of the ReLU + L1 model; T = 0 is plain ReLU.",
        "",
        "| T | validation perplexity | increase | average sparsity | |",
        "|---:|---:|---:|---:|---|",
    ]
    for point in sweep["points"]:
        marker = "chosen" if point["threshold"] == sweep["chosen"]["threshold"] else ""
        lines.append(f"| {point['threshold']:g} | {point['perplexity']:.3f} | {_signed_pct(point['perplexity_increase'], 2)} "
                     f"| {_pct(point['sparsity'])} | {marker} |")
    lines += [
        "",
        "## How it was trained",
        "",
        f"- Model: LLaMA architecture, hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, "
        f"{model['num_attention_heads']} heads ({model['num_key_value_heads']} KV), FFN intermediate "
        f"{model['intermediate_size']}, vocabulary {model['vocab_size']}, context {model['max_position_embeddings']}; "
        f"{metrics['n_parameters'] / 1e6:.2f}M parameters ({metrics['n_parameters_without_embeddings'] / 1e6:.2f}M "
        "without embedding and output matrices).",
        f"- Start: {'from scratch, with a SentencePiece BPE tokenizer trained on the training split' if s['start'] == 'scratch' else s['start']}.",
        f"- Corpus: docstrings and comments of {corpus['n_source_files']} Python {metrics['python']} "
        f"standard-library source files plus pydoc's help topics"
        f"{' and the given text files' if s['extra_text_files'] else ''}; split by source file: "
        f"train/validation/test {_count(corpus['tokens']['train'])}/{_count(corpus['tokens']['validation'])}/"
        f"{_count(corpus['tokens']['test'])} tokens ({_count(corpus['characters']['train'])} training characters); "
        f"{corpus['train_epochs']:.2f} epochs of training text per variant.",
        f"- Budget (the same for every variant): {n_total} steps of {train['batch_size']} x {train['seq_len']} tokens "
        f"({_count(n_total * train['batch_size'] * train['seq_len'])} tokens), AdamW (betas 0.9/0.95, weight decay "
        f"{train['weight_decay']}), peak learning rate {train['peak_lr']:g} after {train['warmup_steps']} warm-up "
        f"steps, cosine decay to {train['final_lr_fraction']:g} of it, gradient clipping {train['grad_clip']}, "
        f"{'bf16 autocast' if train['mixed_precision'] else 'float32'}, seed {train['seed']}.",
        f"- Same budget, shared early steps: every variant sees the same batches with the same learning rate at "
        f"each step. Dense SiLU trains steps 0–{n_total}. ReLU forks from it at step {s0} (activation "
        f"substitution) and trains on to {n_total}. ReLU + L1 forks from ReLU at step {s0 + sa} and trains to "
        f"{n_total} with the L1 term. FATReLU is the ReLU + L1 weights with threshold T, without further training.",
        "- L1 term: the mean of |act(gate(x))| (the activation outputs, before the product with up(x)) over "
        "tokens and neurons, averaged over layers; the loss is next-token loss + λ·L1.",
        f"- λ stages (steps counted from step {s0 + sa}, where regularization begins): "
        + ", ".join(f"λ = {stage['l1_factor']:g} until {stage['end_step']}" for stage in s["l1_stages"])
        + "; constant during the first (warm-up) stage, then rising along a quarter sine within each later stage.",
        f"- Evaluation: float32; test perplexity on {_count(metrics['eval_tokens']['test'])} tokens, threshold "
        f"sweep on {_count(metrics['eval_tokens']['sweep'])} validation tokens, curves on "
        f"{_count(metrics['eval_tokens']['curves'])} validation tokens.",
        "",
        "## Build time",
        "",
        f"Wall seconds per stage ({metrics['threads']} threads).",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in metrics["timings_seconds"].items()]
    lines += [f"| total (wall) | {metrics['total_seconds']:.1f} |", "",
              "Training stages include their validation evaluations. Wall times depend on what else runs on the machine.",
              ""]
    return "\n".join(lines)


def _signed_pct(value: float, digits: int = 1) -> str:
    return f"{'+' if value >= 0 else '−'}{abs(100 * value):.{digits}f}%"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def write_report(metrics: dict, markdown_path: str, command: str) -> tuple[str, str]:
    """Write the markdown and, next to it with the same stem, the PNG. Returns both paths."""
    png_path = os.path.splitext(markdown_path)[0] + ".png"
    markdown = render_markdown(metrics, os.path.basename(png_path), command)  # fails before anything is written
    os.makedirs(os.path.dirname(os.path.abspath(markdown_path)), exist_ok=True)
    with atomic_output(png_path) as partial:
        plot_training(metrics, partial)
    with atomic_output(markdown_path) as partial:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(markdown)
    return markdown_path, png_path

