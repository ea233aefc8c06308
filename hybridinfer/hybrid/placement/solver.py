"""Choose the hot neurons: maximize the expected number of activations served by the GPU under a byte budget.

Neurons are ranked per layer by activation frequency and cut into groups of `group` consecutive neurons
(PowerInfer uses 256); a group's value is the expected number of its activations per token (the sum of its
neurons' frequencies), its cost its bytes. Choosing groups is a 0/1 knapsack. Groups of one layer are taken
as a prefix of that layer's ranking (x[l, g+1] <= x[l, g]), so each layer's hot set is its most active neurons.

When every group costs the same (group size 1, or layers whose sizes divide evenly), taking the most valuable
groups first is optimal: any other choice of the same number of groups can swap a group for a more valuable
unchosen one without losing value. Otherwise the knapsack is solved exactly with scipy's MILP (HiGHS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from ...errors import HybridInferError


@dataclass
class Placement:
    hot: list[np.ndarray]  # per layer: sorted indices of the neurons on the GPU (int64)
    value: float  # expected activations per token served by the GPU
    total_value: float  # expected activations per token over all neurons
    hot_bytes: int

    @property
    def gpu_share(self) -> float:
        return self.value / self.total_value if self.total_value > 0 else 0.0


def _groups(frequency: np.ndarray, group: int):
    """Per layer: neuron order (most active first) and the value and size of each group."""
    layers = []
    for layer_frequency in frequency:
        order = np.argsort(-layer_frequency, kind="stable")
        sizes = np.diff(np.append(np.arange(0, len(order), group), len(order)))
        values = np.add.reduceat(layer_frequency[order], np.arange(0, len(order), group))
        layers.append((order, values, sizes))
    return layers


def place(frequency: np.ndarray, neuron_bytes, capacity: int, group: int = 256) -> Placement:
    """frequency (n_layer, n_ff): share of tokens each neuron fires for; neuron_bytes: one neuron's bytes (an int,
    or one per layer); capacity: bytes for hot neurons."""
    if group < 1:
        raise HybridInferError(f"--group must be at least 1, got {group}")
    layers = _groups(frequency, group)
    per_layer = np.broadcast_to(np.asarray(neuron_bytes, dtype=np.int64), (len(layers),))
    values = np.concatenate([v for _, v, _ in layers]) if layers else np.zeros(0)
    costs = np.concatenate([s * b for (_, _, s), b in zip(layers, per_layer)]).astype(np.int64) if layers \
        else np.zeros(0, dtype=np.int64)
    owner = np.concatenate([np.full(len(v), i) for i, (_, v, _) in enumerate(layers)]) if layers \
        else np.zeros(0, dtype=np.int64)
    chosen = _solve(values, costs, owner, max(0, capacity))
    hot, offset = [], 0
    for order, group_values, sizes in layers:
        picked = chosen[offset:offset + len(group_values)]
        hot.append(np.sort(order[:int(sizes[picked].sum())]).astype(np.int64))
        offset += len(group_values)
    return Placement(hot, float(values[chosen].sum()), float(values.sum()), int(costs[chosen].sum()))


def _solve(values: np.ndarray, costs: np.ndarray, owner: np.ndarray, capacity: int) -> np.ndarray:
    chosen = np.zeros(len(values), dtype=bool)
    if len(values) == 0 or capacity < costs.min():
        return chosen
    if (costs == costs[0]).all():
        count = min(len(values), capacity // int(costs[0]))
        # most valuable first; ties broken by position, which keeps every layer's choice a prefix
        chosen[np.lexsort((np.arange(len(values)), -values))[:count]] = True
        return chosen
    return _solve_milp(values, costs, owner, capacity)


def _solve_milp(values, costs, owner, capacity) -> np.ndarray:
    n = len(values)
    prefix_rows = [(i, i + 1) for i in range(n - 1) if owner[i] == owner[i + 1]]
    matrix = lil_matrix((1 + len(prefix_rows), n))
    matrix[0, :] = costs
    for row, (i, j) in enumerate(prefix_rows, start=1):
        matrix[row, j], matrix[row, i] = 1.0, -1.0  # x_j - x_i <= 0
    upper = np.concatenate([[capacity], np.zeros(len(prefix_rows))])
    lower = np.concatenate([[0], np.full(len(prefix_rows), -np.inf)])
    result = milp(-values, integrality=np.ones(n), bounds=Bounds(0, 1),
                  constraints=LinearConstraint(matrix.tocsr(), lower, upper))
    if result.x is None:
        raise HybridInferError(f"the placement solver failed: {result.message}")
    return result.x > 0.5
