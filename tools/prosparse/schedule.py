"""Schedules: ProSparse's progressive L1 factor λ(t), and the learning rate (linear warm-up, cosine decay).

λ stages are given as ProSparse's tables give them: a list of (λ_i, T_i) with T_i the cumulative step at
which stage i ends, counted from the start of regularization. Stage 1 is the warm-up: λ is constant at λ_1.
In each later stage i, λ rises from the previous stage's value to its own along a quarter sine:

    λ(t) = λ_{i-1} + (λ_i - λ_{i-1}) · sin(π/2 · (t - T_{i-1}) / (T_i - T_{i-1}))    for T_{i-1} <= t < T_i

so λ is continuous between stages, and after the last stage it stays at λ_n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RegularizationStage:
    l1_factor: float  # λ_i, the value λ reaches at the end of the stage
    end_step: int  # T_i, cumulative steps since regularization began


def parse_stages(text: str) -> list[RegularizationStage]:
    """'1e-4:100,1e-3:300,5e-3:600' -> stages; validates that end steps increase and λ is non-negative."""
    stages = []
    for item in text.split(","):
        factor, _, end = item.strip().partition(":")
        if not end:
            raise ValueError(f"stage {item!r} must be written LAMBDA:END_STEP, e.g. 1e-3:300")
        stages.append(RegularizationStage(float(factor), int(end)))
    check_stages(stages)
    return stages


def check_stages(stages: list[RegularizationStage]) -> None:
    if not stages:
        raise ValueError("give at least one regularization stage")
    previous_end = 0
    for stage in stages:
        if stage.l1_factor < 0:
            raise ValueError(f"λ must be >= 0, got {stage.l1_factor}")
        if stage.end_step <= previous_end:
            raise ValueError(f"stage end steps must increase (cumulative), got {stage.end_step} after {previous_end}")
        previous_end = stage.end_step


def l1_factor(step: int, stages: list[RegularizationStage]) -> float:
    """λ at `step` steps after regularization began (step < 0: regularization has not begun, λ = 0)."""
    if step < 0:
        return 0.0
    if step < stages[0].end_step:
        return stages[0].l1_factor
    for previous, stage in zip(stages, stages[1:]):
        if step < stage.end_step:
            progress = (step - previous.end_step) / (stage.end_step - previous.end_step)
            return previous.l1_factor + (stage.l1_factor - previous.l1_factor) * math.sin(math.pi / 2 * progress)
    return stages[-1].l1_factor


def learning_rate(step: int, peak: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.1) -> float:
    """Linear warm-up to `peak` over warmup_steps, then cosine decay to peak·final_fraction at total_steps."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))
