"""The statistics of `latentmem compare` against hand-computed and textbook values: Wilson intervals from
Newcombe (1998, Table I, method 3), McNemar exact p-values from binomial tails worked by hand, the exact
sign-flip test by enumeration, and the bootstrap's and tests' dispatch on seeds and binary scores."""

import math

import numpy as np
import pytest

from latentmem.errors import LatentMemError
from latentmem.eval import stats


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe 1998, Table I
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (0, 10, 0.0, 1.959963984540054**2 / (10 + 1.959963984540054**2)),  # z² / (n + z²) when p̂ = 0
    ],
)
def test_wilson_interval_matches_textbook_values(successes, n, low, high):
    got = stats.wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_contains_the_proportion_at_the_edges():
    for n in range(1, 40):
        assert stats.wilson_interval(0, n)[0] == 0.0 and stats.wilson_interval(n, n)[1] == 1.0
        for k in range(n + 1):
            low, high = stats.wilson_interval(k, n)
            assert 0 <= low <= k / n <= high <= 1


@pytest.mark.parametrize(
    "b, c, p",
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 2 · P(X <= 1), X ~ Bin(7, 1/2) = 2 · 8/128 = 0.125
        (0, 5, 2 / 2**5),  # 0.0625
        (2, 10, 2 * (1 + 12 + 66) / 2**12),  # 0.03857...
        (3, 3, 1.0),  # 2 · P(X <= 3 | n = 6) = 2 · 42/64 > 1: capped
        (0, 0, 1.0),  # no discordant pairs: no evidence of a difference
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(b, c, p):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)
    assert stats.mcnemar_exact(c, b) == pytest.approx(p, rel=1e-12)  # symmetric


def test_exact_sign_flip_test_enumerates_patterns():
    # three equal differences: only all-plus and all-minus reach |sum| = 3, 2 of 8 patterns
    assert stats.sign_flip_test([1.0, 1.0, 1.0]) == 0.25
    # zeros never change under a flip; |±0.5 ± 0.25| ∈ {0.75, 0.25}: every pattern reaches the observed 0.25
    assert stats.sign_flip_test([0.5, -0.25, 0.0]) == 1.0
    # [1, 0.5]: |sums| = 1.5, 0.5, 0.5, 1.5; observed 1.5 -> 2/4
    assert stats.sign_flip_test([1.0, 0.5]) == 0.5
    assert stats.sign_flip_test([0.0, 0.0]) == 1.0


def test_sign_flip_on_binary_differences_is_mcnemar():
    """On one seed of 0/1 scores the sign-flip test is the sign test McNemar's exact test is."""
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 0])  # 6 right only under A, 1 only under B
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    assert stats.sign_flip_test(a - b) == pytest.approx(stats.mcnemar_exact(6, 1)) == pytest.approx(0.125)
    test = stats.paired_test(a, b)
    assert test.method == "mcnemar-exact" and test.p == pytest.approx(0.125)


def test_monte_carlo_sign_flip_is_close_to_the_normal_approximation():
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 1.0, size=200)
    z = abs(d.mean()) / (d.std(ddof=1) / math.sqrt(d.size))
    normal_p = math.erfc(z / math.sqrt(2))
    p = stats.sign_flip_test(d)
    assert 0 < p <= 1 and p == pytest.approx(normal_p, abs=0.02)
    assert stats.sign_flip_test(d) == p  # a fixed generator: the same scores give the same p


def test_accuracy_ci_picks_wilson_or_bootstrap():
    one_seed = np.array([1.0] * 30 + [0.0] * 70)
    ci = stats.accuracy_ci(one_seed)
    assert ci.method == "wilson" and (ci.low, ci.high) == stats.wilson_interval(30, 100)
    partial = np.array([0.5] * 10 + [1.0] * 10)  # partial credit: Wilson does not apply
    assert stats.accuracy_ci(partial).method == "bootstrap"
    seeds = np.stack([one_seed, np.roll(one_seed, 5), one_seed[::-1]])
    ci = stats.accuracy_ci(seeds)
    assert ci.method == "bootstrap" and ci.low < 0.3 < ci.high
    assert stats.accuracy_ci(np.ones((3, 5))) == stats.Interval(1.0, 1.0, "bootstrap")


def test_bootstrap_agrees_with_wilson_on_a_large_sample():
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.5).astype(float)
    low, high = stats.bootstrap_interval(x)
    w_low, w_high = stats.wilson_interval(int(x.sum()), 400)
    assert low == pytest.approx(w_low, abs=0.01) and high == pytest.approx(w_high, abs=0.01)


def test_bootstrap_resamples_seeds_too():
    """Seeds that disagree widen the interval beyond what the items alone give."""
    items = np.tile([1.0, 0.0], 50)
    agree = np.stack([items, items, items])
    disagree = np.stack([items, np.ones(100), np.zeros(100)])
    width = [np.subtract(*stats.bootstrap_interval(m)[::-1]) for m in (agree, disagree)]
    assert width[1] > 2 * width[0]


def test_paired_test_uses_seed_averaged_items_for_several_seeds():
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    b = np.array([[0, 1, 0, 0], [0, 1, 0, 1]])
    test = stats.paired_test(a, b)
    # differences of the seed means: [1, -0.5, 0, 0.5]; |sums| over 8 patterns of (1, 0.5, 0.5):
    # 2, 1, 1, 0, 0, 1, 1, 2 -> observed |1 - 0.5 + 0.5| = 1 is reached by 6 of 8
    assert test.method == "sign-flip permutation" and test.p == 0.75


def test_bad_scores_are_errors():
    with pytest.raises(LatentMemError, match="non-empty"):
        stats.accuracy_ci([])
    with pytest.raises(LatentMemError, match=r"\[0, 1\]"):
        stats.accuracy_ci([0.5, 2.0])
    with pytest.raises(LatentMemError, match="same items"):
        stats.paired_test([1, 0], [1, 0, 1])
    with pytest.raises(LatentMemError, match="successes"):
        stats.wilson_interval(5, 3)
