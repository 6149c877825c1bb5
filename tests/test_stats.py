"""dashrl.report.stats: the intervals the report gives and the rules that turn them into verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from dashrl.infra.seeds import keyed_rng
from dashrl.report.stats import (
    VERDICTS,
    bootstrap_mean,
    decide,
    paired_difference,
    ratio_over_seeds,
    rule,
    t_interval,
    t_quantile_975,
    wilson,
)


def test_wilson_matches_known_values_and_stays_inside_0_1():
    zero = wilson(0, 10)
    assert (zero.estimate, zero.lo) == (0.0, 0.0) and zero.hi == pytest.approx(0.2775, abs=1e-4)
    half = wilson(5, 10)
    assert (half.lo, half.hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(10, 10).hi == 1.0 and wilson(10, 10).lo == pytest.approx(1 - 0.2775, abs=1e-4)
    default = wilson(21, 200)  # the README's base model: 0.105 on 200 problems
    assert default.lo == pytest.approx(0.0697, abs=1e-3) and default.hi == pytest.approx(0.1552, abs=1e-3)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_t_quantiles_table_and_expansion():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-3)
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=1e-3)
    interval = t_interval([0.2, 0.25, 0.3])
    assert interval.estimate == pytest.approx(0.25) and interval.hi - interval.estimate == pytest.approx(4.3027 * 0.05 / 3**0.5, rel=1e-4)
    assert not t_interval([0.2]).has_interval


def test_bootstrap_is_seeded_and_resamples_seeds_then_problems():
    scores = np.random.default_rng(1).random((1, 50))  # continuous scores: percentiles do not tie
    a = bootstrap_mean(scores, 2000, keyed_rng(0, "x"))
    assert a == bootstrap_mean(scores, 2000, keyed_rng(0, "x"))  # same seed and name: same interval
    assert a != bootstrap_mean(scores, 2000, keyed_rng(0, "y"))
    assert a.lo < a.estimate < a.hi and a.method == "bootstrap: problems"
    two_seeds = np.stack([np.zeros(40), np.ones(40)])  # seed 0 gets nothing right, seed 1 everything
    both = bootstrap_mean(two_seeds, 2000, keyed_rng(0, "s"))
    assert both.estimate == 0.5 and (both.lo, both.hi) == (0.0, 1.0) and both.method == "bootstrap: seeds, then problems"
    fixed = bootstrap_mean(two_seeds, 2000, keyed_rng(0, "s"), resample_seeds=False)
    assert (fixed.lo, fixed.hi) == (0.5, 0.5)  # every problem scores 0.5 over the two seeds


def test_bootstrap_and_wilson_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth, n, trials = 0.3, 120, 300
    wilson_hits = boot_hits = 0
    for i in range(trials):
        x = rng.random(n) < truth
        w = wilson(int(x.sum()), n)
        b = bootstrap_mean(x, 1000, keyed_rng(i, "coverage"))
        wilson_hits += w.lo <= truth <= w.hi
        boot_hits += b.lo <= truth <= b.hi
    assert 0.90 <= wilson_hits / trials <= 0.99
    assert 0.88 <= boot_hits / trials <= 0.99


def test_paired_difference_uses_the_same_problems_for_both_arms():
    rng = np.random.default_rng(3)
    a = (rng.random((1, 300)) < 0.4).astype(float)
    same = paired_difference(a, a, 2000, keyed_rng(0, "d"))
    assert (same.estimate, same.lo, same.hi) == (0.0, 0.0, 0.0)  # unpaired resampling would spread it
    better = np.maximum(a, rng.random((1, 300)) < 0.3)  # right wherever a is, and on some more
    diff = paired_difference(better, a, 2000, keyed_rng(0, "d"))
    assert diff.lo > 0 and diff.estimate == pytest.approx(better.mean() - a.mean())
    seeded = paired_difference(np.stack([a[0], better[0], a[0]]), a, 2000, keyed_rng(0, "d"))
    assert seeded.method == "paired bootstrap: seeds, then problems" and seeded.lo == 0.0
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(a, a[:, :10], 100, keyed_rng(0, "d"))


def test_time_ratio_pairs_seeds_and_needs_three_for_an_interval():
    two = ratio_over_seeds({"": 100.0, "s1": 200.0}, {"": 200.0, "s1": 200.0, "s2": 50.0})
    assert two.seeds == 2 and two.estimate == pytest.approx(0.5**0.5) and (two.min, two.max) == (0.5, 1.0)
    assert not two.has_interval
    three = ratio_over_seeds({"": 30.0, "s1": 36.0, "s2": 33.0}, {"": 100.0, "s1": 100.0, "s2": 100.0})
    assert three.has_interval and three.lo < three.estimate < three.hi < 1
    assert ratio_over_seeds({"s1": 1.0}, {"": 1.0}) is None


@pytest.mark.parametrize(("kind", "lo", "hi", "verdict"), [
    ("matches", -0.03, 0.04, "reproduces"),
    ("matches", -0.12, -0.01, "does not"),      # excludes 0 in the reference's favour
    ("matches", -0.08, 0.04, "inconclusive"),
    ("matches", 0.02, 0.09, "inconclusive"),    # better by more than the margin: not "matches", not against
    ("matches", -0.04, -0.01, "reproduces"),    # within the margin wins over a significant small difference
    ("no_worse", -0.04, 0.2, "reproduces"),
    ("no_worse", -0.2, -0.01, "does not"),
    ("no_worse", -0.2, 0.01, "inconclusive"),
    ("neutral", 0.06, 0.2, "does not"),
    ("better", 0.01, 0.2, "reproduces"),
    ("better", -0.01, 0.2, "inconclusive"),
    ("better", -0.2, -0.01, "does not"),
    ("worse", -0.2, -0.01, "reproduces"),
    ("worse", 0.01, 0.2, "does not"),
    ("faster", 0.3, 0.6, "reproduces"),
    ("faster", 0.8, 1.2, "inconclusive"),
    ("faster", 1.1, 1.3, "does not"),
    ("faster", None, None, "inconclusive"),     # one or two seeds: no interval, no verdict
])
def test_verdicts_are_decided_by_the_interval(kind, lo, hi, verdict):
    assert decide(kind, lo, hi, margin=0.05) == verdict and verdict in VERDICTS
    assert rule(kind, 0.05)


def test_unknown_claim_kind_fails():
    with pytest.raises(ValueError, match="unknown claim kind"):
        decide("faster_than_light", 0.1, 0.2, 0.05)
