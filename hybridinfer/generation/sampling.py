"""Token sampling with llama.cpp's semantics (its default `common_sampler` chain), in numpy.

Order, as llama.cpp applies it: repetition penalties (repeat / frequency / presence) over the last
`repeat_last_n` tokens of the history; then greedy argmax if `temperature <= 0`; otherwise top-k, top-p,
min-p, temperature, softmax, and a draw from a seeded generator.

Speed: called once per generated token on logits of up to ~150k entries. The caller's logits are never
written to; a copy is made only when a penalty applies. The whole vocabulary is never sorted: top-k narrows
the field with a vectorised threshold pass (`logits >= max - d`) and then `argpartition`; top-p bucket-sorts
by distance below the maximum and sorts only the bucket where the cumulative mass crosses p; min-p is a mask.

Reproducibility: each non-greedy `sample` consumes exactly one uniform draw from a `numpy.random.Generator`
seeded with `seed`, so the same seed and the same inputs give the same token sequence. The draw itself is not
bit-identical to llama.cpp's `std::discrete_distribution`.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import HybridInferError

RANDOM_SEED = -1
LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp stores -1 as this uint32; it also means "pick a random seed"


@dataclass(frozen=True)
class SamplerSettings:
    """llama.cpp's sampling flags. Invalid values raise `HybridInferError` on construction."""

    temperature: float = 0.8  # --temp; <= 0 means greedy
    top_k: int = 40  # --top-k; <= 0 disables
    top_p: float = 0.95  # --top-p; >= 1 disables
    min_p: float = 0.05  # --min-p; 0 disables
    repeat_penalty: float = 1.0  # --repeat-penalty; 1 disables
    repeat_last_n: int = 64  # --repeat-last-n; 0 disables, -1 = the whole history
    seed: int = RANDOM_SEED  # -s/--seed; -1 => random
    frequency_penalty: float = 0.0  # --frequency-penalty; subtracts count * value
    presence_penalty: float = 0.0  # --presence-penalty; subtracts value once per present id

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalties_active(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        )


def _real(value, flag: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise HybridInferError(f"invalid {flag} {value!r}: expected a number")
    value = float(value)
    if math.isnan(value):
        raise HybridInferError(f"invalid {flag} nan: expected a number")
    return value


def _integer(value, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise HybridInferError(f"invalid {flag} {value!r}: expected an integer")
    return int(value)


# Penalty ranges. The penalties are applied to float32 logits, so a value float64 holds but float32 does not
# (1e-300 rounds to 0, -1e39 to -inf) would make the logits infinite or NaN. Within these ranges every finite
# logit a model gives stays finite. Frequency and presence penalties take OpenAI's documented range.
REPEAT_PENALTY_RANGE = (0.01, 100.0)
ADDITIVE_PENALTY_RANGE = (-2.0, 2.0)


def _within(value, flag: str, bounds: tuple[float, float], meaning: str) -> None:
    low, high = bounds
    if not low <= _real(value, flag) <= high:
        raise HybridInferError(f"invalid {flag} {value}: must be between {low:g} and {high:g} ({meaning})")


def _validate(s: SamplerSettings) -> None:
    temperature = _real(s.temperature, "--temp")
    if math.isinf(temperature) and temperature > 0:
        raise HybridInferError("invalid --temp inf: expected a finite number (0 or less means greedy)")
    _integer(s.top_k, "--top-k")
    _within(s.top_p, "--top-p", (0.0, 1.0), "1 disables it")
    _within(s.min_p, "--min-p", (0.0, 1.0), "0 disables it")
    _within(s.repeat_penalty, "--repeat-penalty", REPEAT_PENALTY_RANGE, "1 disables it; above 1 discourages repeats")
    if _integer(s.repeat_last_n, "--repeat-last-n") < -1:
        raise HybridInferError(
            f"invalid --repeat-last-n {s.repeat_last_n}: must be 0 (disabled), -1 (whole context) or a positive count"
        )
    _within(s.frequency_penalty, "--frequency-penalty", ADDITIVE_PENALTY_RANGE, "0 disables it")
    _within(s.presence_penalty, "--presence-penalty", ADDITIVE_PENALTY_RANGE, "0 disables it")
    if _integer(s.seed, "-s/--seed") < -1:
        raise HybridInferError(f"invalid -s/--seed {s.seed}: must be -1 (random) or a non-negative integer")


# ----------------------------------------------------------------------------------------------------------
# Pure steps of the chain


def _as_logits(logits: np.ndarray) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {array.shape}")
    return array


def apply_penalties(logits: np.ndarray, history: Sequence[int], settings: SamplerSettings) -> np.ndarray:
    """Return a float32 copy of `logits` with llama.cpp's penalties applied (the input is not modified).

    Over the distinct ids in the last `repeat_last_n` tokens of `history` (all of it for -1, none for 0):
    a positive logit is divided by `repeat_penalty`, any other multiplied by it; then
    `count * frequency_penalty + presence_penalty` is subtracted. Ids outside the vocabulary are ignored.
    """
    out = np.array(_as_logits(logits), dtype=np.float32, copy=True)
    _penalize_inplace(out, history, settings)
    return out


def _penalize_inplace(out: np.ndarray, history: Sequence[int], s: SamplerSettings) -> None:
    n = s.repeat_last_n
    if n == 0 or len(history) == 0:
        return
    window = history if n < 0 else history[-n:]
    ids = np.asarray(window, dtype=np.int64).ravel()
    ids = ids[(ids >= 0) & (ids < out.size)]
    if ids.size == 0:
        return
    unique, counts = np.unique(ids, return_counts=True)
    values = out[unique]
    if s.repeat_penalty != 1.0:
        penalty = np.float32(s.repeat_penalty)
        values = np.where(values > 0, values / penalty, values * penalty)
    if s.frequency_penalty != 0.0 or s.presence_penalty != 0.0:
        values = values - (counts * s.frequency_penalty + s.presence_penalty).astype(np.float32)
    out[unique] = values


_THRESHOLD_STEPS = (4.0, 8.0, 16.0, 32.0, 64.0)  # logit distances below the maximum tried before a full pass


def _sorted_desc(logits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`positions` (ascending) reordered by descending logit; ties keep the lower position first."""
    return positions[np.argsort(-logits[positions], kind="stable")]


def _top_k_positions(logits: np.ndarray, top: np.float32, k: int) -> np.ndarray:
    """Positions of the k largest logits, ascending. A cheap threshold pass narrows the field first, so the
    argpartition usually runs over a few hundred entries instead of the whole vocabulary."""
    n = logits.size
    field = None
    for step in _THRESHOLD_STEPS:
        field = np.flatnonzero(logits >= top - np.float32(step))
        if field.size >= k:
            break
    else:
        field = np.arange(n)
    if field.size > k:
        field = field[np.argpartition(logits[field], field.size - k)[field.size - k :]]
        field.sort()
    return field


def _nucleus_length(cumulative: np.ndarray, top_p: float) -> int:
    """Length of the smallest prefix whose cumulative probability reaches top_p, or len+1 if none does."""
    return int(np.searchsorted(cumulative, top_p, side="left")) + 1


_SMALL = 2048  # candidate sets up to this size are simply sorted
_BUCKETS_PER_LOGIT = 64
_N_BUCKETS = 64 * _BUCKETS_PER_LOGIT  # logits more than 64 below the maximum share the last bucket


def _top_p_positions(logits: np.ndarray, exps: np.ndarray, total: float, top: np.float32, top_p: float) -> np.ndarray:
    """Positions of the top-p nucleus (the smallest most-probable prefix holding top_p of the mass), unordered.

    Large arrays are bucket-sorted by distance below the maximum (1/64 logit per bucket, as llama.cpp's
    top-p does): buckets before the one where the cumulative mass crosses top_p are kept whole, and only
    that one bucket is sorted, so the cost stays linear in the vocabulary size.
    """
    n = logits.size
    if n <= _SMALL:
        order = _sorted_desc(logits, np.arange(n))
        return order[: _nucleus_length(np.cumsum(exps[order], dtype=np.float64) / total, top_p)]
    distance = (top - logits) * np.float32(_BUCKETS_PER_LOGIT)  # >= 0; +inf for -inf logits
    np.minimum(distance, np.float32(_N_BUCKETS - 1), out=distance)
    bucket = distance.astype(np.intp)
    cumulative = np.cumsum(np.bincount(bucket, weights=exps, minlength=_N_BUCKETS)) / total
    crossing = min(int(np.searchsorted(cumulative, top_p, side="left")), _N_BUCKETS - 1)
    before = float(cumulative[crossing - 1]) if crossing > 0 else 0.0
    edge = _sorted_desc(logits, np.flatnonzero(bucket == crossing))
    keep = _nucleus_length(before + np.cumsum(exps[edge], dtype=np.float64) / total, top_p)
    return np.concatenate([np.flatnonzero(bucket < crossing), edge[:keep]])


def _filter(logits: np.ndarray, s: SamplerSettings) -> tuple[np.ndarray, np.ndarray]:
    """Top-k, then top-p, then min-p over (already penalized) logits, never sorting the whole vocabulary.

    Returns (vocab ids, their logits) of the survivors, before temperature, in no particular order.
    """
    n = logits.size
    top = logits.max()
    if not np.isfinite(top):
        raise ValueError("logits contain NaN or have no finite maximum")
    k = int(s.top_k)
    if 0 < k < n:
        ids = np.array([int(np.argmax(logits))]) if k == 1 else _top_k_positions(logits, top, k)
        cand = logits[ids]
    else:
        ids = None
        cand = logits
    if s.top_p < 1.0:
        exps = np.exp(cand - top)
        total = float(exps.sum(dtype=np.float64))  # top-p works on the softmax of the top-k survivors
        positions = _top_p_positions(cand, exps, total, top, s.top_p)
        if s.min_p > 0.0:
            # Both filters keep a most-probable prefix, so applying min-p to the nucleus is the same as
            # applying it after top-p; its threshold is relative to the maximum, which top-p always keeps.
            positions = positions[cand[positions] >= top + np.float32(math.log(s.min_p))]
    elif s.min_p > 0.0:
        # llama.cpp compares logits: p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p)
        positions = np.flatnonzero(cand >= top + np.float32(math.log(s.min_p)))
    else:
        positions = None
    if positions is None:
        return (np.arange(n) if ids is None else ids), cand
    return (positions if ids is None else ids[positions]), cand[positions]


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    shifted = logits.astype(np.float64)
    shifted -= shifted.max()
    with np.errstate(over="ignore"):
        scaled = shifted / temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    return probs


def filter_candidates(logits: np.ndarray, settings: SamplerSettings) -> tuple[np.ndarray, np.ndarray]:
    """The candidates the sampler draws from, for already-penalized `logits` (not modified).

    Returns (ids int64, probs float64): the survivors of top-k, top-p and min-p, most probable first (ties:
    lower id first), with their probabilities after temperature (summing to 1). Greedy settings
    (temperature <= 0) give the single argmax with probability 1.
    """
    array = _as_logits(logits)
    if settings.greedy:
        best = int(np.argmax(array))
        if np.isnan(array[best]):
            raise ValueError("logits contain NaN")
        return np.array([best], dtype=np.int64), np.array([1.0])
    ids, cand = _filter(array, settings)
    order = np.lexsort((ids, -cand))
    ids, cand = ids[order], cand[order]
    return ids.astype(np.int64, copy=False), _softmax(cand, settings.temperature)


class Sampler:
    """Samples one token id per call; holds the seeded generator (so a sequence is reproducible)."""

    def __init__(self, settings: SamplerSettings | None = None):
        self.settings = settings if settings is not None else SamplerSettings()
        _validate(self.settings)
        seed = int(self.settings.seed)
        if seed in (RANDOM_SEED, LLAMA_DEFAULT_SEED):
            seed = secrets.randbits(32)  # llama.cpp draws a uint32 from std::random_device
        self.seed: int = seed  # the seed actually used (llama.cpp prints it)
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Restart the random stream from `self.seed` (e.g. before regenerating)."""
        self._rng = np.random.default_rng(self.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """One token id from float32 `logits` [vocab]; `history` is every token so far (prompt + generated)."""
        s = self.settings
        array = _as_logits(logits)
        if s.penalties_active and len(history) > 0:
            array = np.array(array, dtype=np.float32, copy=True)  # never touch the caller's array
            _penalize_inplace(array, history, s)
        if s.greedy:
            best = int(np.argmax(array))
            if np.isnan(array[best]):
                raise ValueError("logits contain NaN")
            return best
        ids, cand = _filter(array, s)
        # unnormalised softmax weights after temperature; the draw scales the uniform by their total
        shifted = cand - cand.max()
        if not 1e-3 <= s.temperature <= 1e3:  # float32 would overflow, or round the temperature to 0 or inf
            shifted = shifted.astype(np.float64)
        with np.errstate(over="ignore"):
            weights = np.exp(shifted / shifted.dtype.type(s.temperature))
        cumulative = np.cumsum(weights, dtype=np.float64)
        u = self._rng.random() * cumulative[-1]
        index = int(np.searchsorted(cumulative, u, side="right"))  # lands on a token with weight > 0
        if index >= weights.size:  # u rounded up to the total: take the last token that can be drawn
            index = int(np.flatnonzero(weights > 0.0)[-1])
        return int(ids[index])

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        return self.sample(logits, history)


def make_sampler(
    temp: float = 0.8,
    top_p: float = 0.95,
    min_p: float = 0.05,
    top_k: int = 40,
    *,
    repeat_penalty: float = 1.0,
    repeat_last_n: int = 64,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    seed: int = RANDOM_SEED,
) -> Sampler:
    """A `Sampler` from keyword knobs (like mlx-lm's `make_sampler`), with llama.cpp's defaults and meanings:
    temp <= 0 greedy, top_k <= 0 / top_p >= 1 / min_p == 0 disable that filter, seed -1 random."""
    return Sampler(
        SamplerSettings(
            temperature=temp,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            seed=seed,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
        )
    )
