"""ProSparse's λ schedule: constant warm-up, quarter-sine rise within each later stage, continuity between stages."""

import math

import pytest

from tools.prosparse.schedule import RegularizationStage, l1_factor, learning_rate, parse_stages

STAGES = [RegularizationStage(0.01, 100), RegularizationStage(0.05, 300), RegularizationStage(0.2, 400)]


def test_no_regularization_before_it_begins():
    assert l1_factor(-1, STAGES) == 0.0


def test_warm_up_stage_is_constant():
    assert {l1_factor(t, STAGES) for t in range(0, 100)} == {0.01}


def test_sine_rise_within_a_stage():
    for t in (100, 150, 200, 250, 299):
        expected = 0.01 + (0.05 - 0.01) * math.sin(math.pi / 2 * (t - 100) / 200)
        assert l1_factor(t, STAGES) == pytest.approx(expected)
    # concave rise: past the midpoint of the stage λ has covered more than half of the way
    assert l1_factor(200, STAGES) - 0.01 > 0.5 * (0.05 - 0.01)
    values = [l1_factor(t, STAGES) for t in range(100, 400)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_continuous_between_stages():
    for boundary, value in ((100, 0.01), (300, 0.05), (400, 0.2)):
        assert l1_factor(boundary, STAGES) == pytest.approx(value)
        assert l1_factor(boundary - 1, STAGES) == pytest.approx(value, rel=1e-3)


def test_last_value_holds_after_the_last_stage():
    assert l1_factor(400, STAGES) == l1_factor(10_000, STAGES) == 0.2


def test_parse_stages():
    assert parse_stages("0.01:100, 0.05:300,0.2:400") == STAGES
    with pytest.raises(ValueError):
        parse_stages("0.01:100,0.05:50")  # end steps are cumulative and must increase
    with pytest.raises(ValueError):
        parse_stages("0.01")


def test_learning_rate_warm_up_and_cosine():
    assert learning_rate(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert learning_rate(60, 1.0, 10, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(110, 1.0, 10, 110) == pytest.approx(0.1)
