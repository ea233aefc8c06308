import math
import time

import numpy as np
import pytest

from hybridinfer.errors import HybridInferError
from hybridinfer.generation.sampling import Sampler, SamplerSettings, apply_penalties, filter_candidates, make_sampler


def random_logits(vocab, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def reference_candidates(logits, s):
    """llama.cpp's chain done the obvious way: full sort, then top-k, top-p, min-p, temperature."""
    order = np.argsort(-logits.astype(np.float64), kind="stable")
    if 0 < s.top_k < order.size:
        order = order[: s.top_k]
    if s.top_p < 1.0:
        probs = np.exp(logits[order].astype(np.float64) - logits[order[0]])
        probs /= probs.sum()
        cumulative = np.cumsum(probs)
        keep = next((i + 1 for i, c in enumerate(cumulative) if c >= s.top_p), order.size)
        order = order[:keep]
    if s.min_p > 0.0:
        probs = np.exp(logits[order].astype(np.float64) - logits[order[0]])
        order = order[probs >= s.min_p]
    scaled = logits[order].astype(np.float64) / s.temperature
    probs = np.exp(scaled - scaled.max())
    return order, probs / probs.sum()


# --- greedy / top-k ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_greedy_is_argmax(temperature):
    sampler = Sampler(SamplerSettings(temperature=temperature, seed=1))
    for seed in range(5):
        logits = random_logits(1000, seed)
        assert sampler.sample(logits, [1, 2, 3]) == int(np.argmax(logits))


def test_greedy_ties_pick_lowest_id():
    logits = random_logits(100, 3)
    logits[[10, 40, 70]] = logits.max() + 1.0
    assert Sampler(SamplerSettings(temperature=0)).sample(logits, []) == 10


def test_greedy_uses_penalized_logits():
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    settings = SamplerSettings(temperature=0, repeat_penalty=2.0)
    assert Sampler(settings).sample(logits, []) == 1
    assert Sampler(settings).sample(logits, [1]) == 2  # 3.0 / 2 < 2.0


@pytest.mark.parametrize("temperature", [0.1, 0.8, 1.0, 5.0])
def test_top_k_one_equals_greedy(temperature):
    sampler = Sampler(SamplerSettings(temperature=temperature, top_k=1, top_p=1.0, min_p=0.0, seed=7))
    for seed in range(10):
        logits = random_logits(5000, seed)
        assert sampler.sample(logits, []) == int(np.argmax(logits))


# --- seeds -------------------------------------------------------------------------------------------------


def generate(sampler, steps=60, vocab=500):
    history = [1, 2, 3]
    for step in range(steps):
        logits = random_logits(vocab, 1000 + step, scale=1.0)  # flat enough that draws really vary
        history.append(sampler.sample(logits, history))
    return history[3:]


def test_same_seed_same_sequence_and_different_seeds_differ():
    settings = dict(temperature=1.0, top_k=0, top_p=0.99, min_p=0.0, repeat_penalty=1.1)
    first = generate(Sampler(SamplerSettings(seed=42, **settings)))
    again = generate(Sampler(SamplerSettings(seed=42, **settings)))
    other = generate(Sampler(SamplerSettings(seed=43, **settings)))
    assert first == again
    assert first != other


def test_random_seed_is_exposed_and_reproducible():
    sampler = Sampler(SamplerSettings(seed=-1, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    assert isinstance(sampler.seed, int) and 0 <= sampler.seed < 2**32
    sequence = generate(sampler)
    replay = Sampler(SamplerSettings(seed=sampler.seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    assert generate(replay) == sequence
    sampler.reset()
    assert generate(sampler) == sequence


def test_fixed_seed_is_kept():
    assert Sampler(SamplerSettings(seed=1234)).seed == 1234


# --- candidate filters -------------------------------------------------------------------------------------


def known_logits():
    """Six ids with probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 (at temperature 1), shuffled."""
    probs = np.array([0.06, 0.4, 0.1, 0.25, 0.04, 0.15])
    return (np.log(probs) + 2.5).astype(np.float32)  # ids by probability: 1, 3, 5, 2, 0, 4


def candidate_set(logits, **settings):
    ids, probs = filter_candidates(logits, SamplerSettings(**settings))
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-9)
    assert np.all(np.diff(probs) <= 1e-12)  # most probable first
    return [int(i) for i in ids]


def test_top_k_keeps_k_most_probable():
    logits = known_logits()
    assert candidate_set(logits, temperature=1.0, top_k=3, top_p=1.0, min_p=0.0) == [1, 3, 5]
    assert candidate_set(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) == [1, 3, 5, 2, 0, 4]
    assert candidate_set(logits, temperature=1.0, top_k=100, top_p=1.0, min_p=0.0) == [1, 3, 5, 2, 0, 4]


@pytest.mark.parametrize(
    "top_p, expected",
    [(0.0, [1]), (0.35, [1]), (0.6, [1, 3]), (0.75, [1, 3, 5]), (0.85, [1, 3, 5, 2]), (0.99, [1, 3, 5, 2, 0, 4])],
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, expected):
    assert candidate_set(known_logits(), temperature=1.0, top_k=0, top_p=top_p, min_p=0.0) == expected


def test_top_p_applies_to_the_top_k_softmax():
    # after top-k 3 the probabilities are 0.4/0.8, 0.25/0.8, 0.15/0.8: 0.5 + 0.3125 >= 0.78, while over the
    # whole vocabulary 0.4 + 0.25 < 0.78 <= 0.4 + 0.25 + 0.15
    logits = known_logits()
    assert candidate_set(logits, temperature=1.0, top_k=3, top_p=0.78, min_p=0.0) == [1, 3]
    assert candidate_set(logits, temperature=1.0, top_k=0, top_p=0.78, min_p=0.0) == [1, 3, 5]


@pytest.mark.parametrize("min_p, expected", [(0.05, [1, 3, 5, 2, 0, 4]), (0.12, [1, 3, 5, 2, 0]), (0.3, [1, 3, 5]), (0.5, [1, 3]), (1.0, [1])])
def test_min_p_keeps_prob_at_least_min_p_times_max(min_p, expected):
    assert candidate_set(known_logits(), temperature=1.0, top_k=0, top_p=1.0, min_p=min_p) == expected


def test_min_p_after_top_p():
    assert candidate_set(known_logits(), temperature=1.0, top_k=0, top_p=0.85, min_p=0.3) == [1, 3, 5]
    assert candidate_set(known_logits(), temperature=1.0, top_k=0, top_p=0.6, min_p=0.12) == [1, 3]


def test_probabilities_are_temperature_scaled_softmax_of_survivors():
    logits = known_logits()
    for temperature in (0.3, 1.0, 2.5):
        ids, probs = filter_candidates(logits, SamplerSettings(temperature=temperature, top_k=4, top_p=1.0, min_p=0.0))
        expected = np.exp(logits[ids].astype(np.float64) / temperature)
        np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-6)


def test_greedy_filter_is_single_argmax():
    logits = random_logits(300, 9)
    ids, probs = filter_candidates(logits, SamplerSettings(temperature=0.0))
    assert ids.tolist() == [int(np.argmax(logits))] and probs.tolist() == [1.0]


@pytest.mark.parametrize("vocab", [50, 3000, 40000, 151936])
def test_filters_match_reference_on_random_logits(vocab):
    rng = np.random.default_rng(vocab)
    for trial in range(12):
        logits = random_logits(vocab, 100 * vocab + trial, scale=float(rng.choice([0.3, 1.0, 3.0, 8.0])))
        settings = SamplerSettings(
            temperature=float(rng.choice([0.5, 0.8, 1.3])),
            top_k=int(rng.choice([0, 1, 5, 40, 1000])),
            top_p=float(rng.choice([0.3, 0.9, 0.95, 1.0])),
            min_p=float(rng.choice([0.0, 0.01, 0.05, 0.2])),
        )
        ids, probs = filter_candidates(logits, settings)
        ref_ids, ref_probs = reference_candidates(logits, settings)
        assert ids.tolist() == ref_ids.tolist(), settings
        np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-12)


def test_draws_follow_the_filtered_distribution():
    logits = known_logits()
    settings = SamplerSettings(temperature=0.7, top_k=0, top_p=0.85, min_p=0.0, seed=5)
    ids, probs = filter_candidates(logits, settings)
    sampler = Sampler(settings)
    n = 20000
    counts = np.bincount([sampler.sample(logits, []) for _ in range(n)], minlength=logits.size)
    assert set(np.flatnonzero(counts).tolist()) == set(ids.tolist())  # only survivors, all of them
    np.testing.assert_allclose(counts[ids] / n, probs, atol=0.015)


def test_sampling_never_leaves_the_top_k_on_a_large_vocab():
    logits = random_logits(151936, 11, scale=2.0)
    allowed = set(np.argsort(logits)[-40:].tolist())
    sampler = Sampler(SamplerSettings(temperature=1.5, top_k=40, top_p=1.0, min_p=0.0, seed=3))
    assert all(sampler.sample(logits, []) in allowed for _ in range(300))


# --- penalties ---------------------------------------------------------------------------------------------


def test_repeat_penalty_divides_positive_and_multiplies_negative_in_window_only():
    logits = random_logits(20, 21)
    logits[3], logits[7], logits[9], logits[12] = 2.0, -1.5, 0.0, 4.0
    settings = SamplerSettings(repeat_penalty=2.0, repeat_last_n=64)
    out = apply_penalties(logits, [3, 7, 9, 3, 3], settings)
    assert out[3] == pytest.approx(1.0)  # positive: divided once, however often it repeats
    assert out[7] == pytest.approx(-3.0)  # negative: multiplied
    assert out[9] == 0.0  # zero: multiplied (stays 0)
    untouched = [i for i in range(20) if i not in (3, 7, 9)]
    np.testing.assert_array_equal(out[untouched], logits[untouched])
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "last_n, penalized",
    [(0, set()), (1, {4}), (3, {2, 3, 4}), (4, {1, 2, 3, 4}), (5, {5, 1, 2, 3, 4}), (100, {5, 1, 2, 3, 4}), (-1, {5, 1, 2, 3, 4})],
)
def test_repeat_last_n_window(last_n, penalized):
    logits = np.abs(random_logits(10, 22)) + 1.0  # all positive
    history = [5, 1, 2, 3, 4]
    out = apply_penalties(logits, history, SamplerSettings(repeat_penalty=1.5, repeat_last_n=last_n))
    changed = set(np.flatnonzero(out != logits).tolist())
    assert changed == penalized
    for i in penalized:
        assert out[i] == pytest.approx(logits[i] / 1.5)


def test_penalties_ignore_ids_outside_vocab():
    logits = random_logits(10, 23)
    out = apply_penalties(logits, [-1, 10, 99], SamplerSettings(repeat_penalty=1.3))
    np.testing.assert_array_equal(out, logits)


def test_frequency_and_presence_penalties():
    logits = random_logits(10, 24)
    settings = SamplerSettings(repeat_penalty=1.0, frequency_penalty=0.5, presence_penalty=0.25, repeat_last_n=-1)
    out = apply_penalties(logits, [2, 2, 2, 6], settings)
    assert out[2] == pytest.approx(logits[2] - 3 * 0.5 - 0.25)
    assert out[6] == pytest.approx(logits[6] - 0.5 - 0.25)
    assert out[0] == logits[0]


def test_sample_does_not_modify_callers_logits():
    logits = random_logits(5000, 25)
    before = logits.copy()
    for settings in (
        SamplerSettings(repeat_penalty=1.3, seed=1),
        SamplerSettings(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.2),
        SamplerSettings(top_k=0, top_p=0.9, min_p=0.0, repeat_penalty=0.7, seed=2),
    ):
        Sampler(settings).sample(logits, list(range(0, 5000, 7)))
        filter_candidates(logits, settings)
        apply_penalties(logits, [1, 2, 3], settings)
    np.testing.assert_array_equal(logits, before)


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(top_p=-0.1), "--top-p"),
        (dict(top_p=1.5), "--top-p"),
        (dict(min_p=-0.01), "--min-p"),
        (dict(min_p=1.2), "--min-p"),
        (dict(repeat_penalty=0.0), "--repeat-penalty"),
        (dict(repeat_penalty=-1.0), "--repeat-penalty"),
        (dict(repeat_penalty=1e-300), "--repeat-penalty"),  # 0 in float32: the logits would divide by 0
        (dict(repeat_penalty=1e39), "--repeat-penalty"),  # inf in float32
        (dict(repeat_penalty=1000.0), "--repeat-penalty"),
        (dict(frequency_penalty=-1e308), "--frequency-penalty"),
        (dict(frequency_penalty=2.5), "--frequency-penalty"),
        (dict(presence_penalty=-1e39), "--presence-penalty"),
        (dict(presence_penalty=-1e308), "--presence-penalty"),
        (dict(presence_penalty=float("inf")), "--presence-penalty"),
        (dict(repeat_last_n=-2), "--repeat-last-n"),
        (dict(seed=-5), "--seed"),
        (dict(temperature=float("nan")), "--temp"),
        (dict(top_k=2.5), "--top-k"),
    ],
)
def test_invalid_settings_raise_one_line_error(settings, flag):
    with pytest.raises(HybridInferError) as info:
        SamplerSettings(**settings)
    message = str(info.value)
    assert flag in message and "\n" not in message
    with pytest.raises(HybridInferError):
        make_sampler(**{ {"temperature": "temp"}.get(k, k): v for k, v in settings.items()})


def test_boundary_settings_are_valid():
    SamplerSettings(top_p=0.0, min_p=0.0, top_k=-1, repeat_last_n=-1, temperature=-1.0)
    SamplerSettings(top_p=1.0, min_p=1.0, repeat_penalty=0.5, seed=0)
    SamplerSettings(repeat_penalty=0.01, frequency_penalty=-2.0, presence_penalty=2.0)
    SamplerSettings(repeat_penalty=100.0, frequency_penalty=2.0, presence_penalty=-2.0)


def test_the_penalty_ranges_are_in_the_message():
    with pytest.raises(HybridInferError, match=r"between 0\.01 and 100"):
        SamplerSettings(repeat_penalty=1e-300)
    with pytest.raises(HybridInferError, match=r"between -2 and 2"):
        SamplerSettings(presence_penalty=-1e39)


EXTREMES = [5e-324, 1e-300, 1e-39, 1e-3, 0.01, 2.0, 100.0, 1e3, 1e38, 1e39, 1e308]


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty",
                                   "presence_penalty"])
def test_every_accepted_value_samples_without_inf_or_nan(field):
    """Values finite in float64 but not in float32 (1e-300, 1e39) are refused or computed safely: whatever
    the settings accept samples finite probabilities, with no float warning, even next to a -inf logit."""
    logits = random_logits(300, 31, scale=5.0)
    logits[7] = -np.inf  # as `ignore_eos` masks end-of-text tokens
    history = list(range(0, 300, 2))
    for value in EXTREMES + [-v for v in EXTREMES]:
        for filters in (dict(top_k=0, top_p=1.0, min_p=0.0), dict(top_k=40, top_p=0.9, min_p=0.05)):
            try:
                settings = SamplerSettings(**{**filters, "repeat_last_n": -1, "seed": 1, field: value})
            except HybridInferError:
                continue
            with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is fine
                ids, probs = filter_candidates(apply_penalties(logits, history, settings), settings)
                token = Sampler(settings).sample(logits, history)
            assert np.isfinite(probs).all() and math.isclose(probs.sum(), 1.0), (field, value)
            assert token != 7 and 0 <= token < 300, (field, value)


def test_make_sampler_maps_keywords():
    sampler = make_sampler(temp=0.5, top_p=0.9, min_p=0.1, top_k=20, repeat_penalty=1.1, seed=9)
    s = sampler.settings
    assert (s.temperature, s.top_p, s.min_p, s.top_k, s.repeat_penalty, s.seed) == (0.5, 0.9, 0.1, 20, 1.1, 9)
    logits = random_logits(100, 26)
    assert make_sampler(temp=0.0).sample(logits, []) == int(np.argmax(logits))


def test_speed_on_a_large_vocab():
    logits = random_logits(151936, 27)
    history = list(range(0, 151936, 300))
    sampler = Sampler(SamplerSettings(repeat_penalty=1.1, seed=1))
    start = time.perf_counter()
    for _ in range(200):
        sampler.sample(logits, history)
    assert time.perf_counter() - start < 2.0  # ~0.1 ms a token here; a full-vocab sort each time is far slower


@pytest.mark.parametrize("temperature", [1e-50, 1e-8, 1e3])
def test_extreme_temperatures(temperature):
    logits = random_logits(1000, 28)
    sampler = Sampler(SamplerSettings(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    tokens = [sampler.sample(logits, []) for _ in range(20)]
    if temperature < 1:
        assert tokens == [int(np.argmax(logits))] * 20
    else:
        assert len(set(tokens)) > 1
    _, probs = filter_candidates(logits, SamplerSettings(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0))
    assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0)
