"""Statistics of `latentmem compare`: a 95% interval for a method's accuracy and a paired test of two
methods scored on the same test items. Numpy and the standard library only (scipy is not a dependency).

Scores come as a matrix, one row per training seed and one column per test item (every seed is scored on
the same items, so two methods' matrices pair column by column); a 1-D array is one seed.

Interval (`accuracy_ci`). One seed with 0/1 scores: the Wilson score interval (exact enough at the sizes
of a test split, and never outside [0, 1]). Otherwise: a percentile bootstrap that resamples the seeds and
the items (independently, with replacement), so that the interval reflects both the test sample and the
training seed.

Paired test (`paired_test`). One seed with 0/1 scores: McNemar's exact test (a two-sided binomial test of
the discordant pairs). Otherwise: a two-sided sign-flip permutation test of the per-item differences of
the seed-averaged scores (exact when at most `EXACT_MAX` items differ, Monte Carlo otherwise).

Resampling draws from a generator of fixed seed, so the same scores always give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from latentmem.errors import LatentMemError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
RESAMPLES = 10_000
EXACT_MAX = 16  # nonzero differences up to which the permutation test enumerates all 2^k sign patterns
_CHUNK = 1_000  # resamples per vectorised batch (bounds memory at `_CHUNK` x items)


class StatsError(LatentMemError, ValueError):
    """Scores of the wrong shape or range for a statistic."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str  # "wilson" or "bootstrap"


@dataclass(frozen=True)
class PairedTest:
    p: float
    method: str  # "mcnemar-exact" or "sign-flip permutation"


def score_matrix(scores: ArrayLike) -> np.ndarray:
    """`scores` as a float (seeds, items) matrix; a 1-D array is one seed. At least one item, scores in
    [0, 1]."""
    m = np.asarray(scores, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise StatsError(f"expected a non-empty (seeds, items) matrix of scores, got shape {m.shape}")
    if not np.all((m >= 0) & (m <= 1)):
        raise StatsError("scores must lie in [0, 1]")
    return m


def is_binary(m: np.ndarray) -> bool:
    return bool(np.all((m == 0) | (m == 1)))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion `successes / n`."""
    if n <= 0 or not 0 <= successes <= n:
        raise StatsError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 or n successes the bound is exactly 0 or 1; the float formula misses it by an ulp, and an
    # interval that then excludes its own proportion would be wrong
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def bootstrap_interval(
    scores: ArrayLike, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score, resampling seeds and items with replacement."""
    m = score_matrix(scores)
    n_seeds, n_items = m.shape
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        # how often each seed and each item is drawn: the mean of the resampled grid is then
        # seed_counts @ m @ item_counts / (seeds * items), without building the grid
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=size)
        means.append(((seed_counts @ m) * item_counts).sum(axis=1) / (n_seeds * n_items))
    tail = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means), [tail, 1 - tail])
    return float(low), float(high)


def accuracy_ci(scores: ArrayLike) -> Interval:
    """The 95% interval of the mean score: Wilson for one seed of 0/1 scores, else the bootstrap."""
    m = score_matrix(scores)
    if m.shape[0] == 1 and is_binary(m):
        return Interval(*wilson_interval(int(m.sum()), m.shape[1]), "wilson")
    return Interval(*bootstrap_interval(m), "bootstrap")


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer sums, one division)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for `b` pairs right only under A and `c` right only under B."""
    if b < 0 or c < 0:
        raise StatsError(f"discordant counts must be >= 0, got {b} and {c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * binomial_cdf_half(min(b, c), b + c))


def sign_flip_test(differences: ArrayLike, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of a zero mean of paired `differences`: the share of sign patterns whose |sum|
    reaches the observed one. Zero differences do not change under a flip, so only the others are
    flipped: exactly over all patterns when there are at most `EXACT_MAX`, else over `resamples` random
    patterns (with the observed one counted, so that p > 0)."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, observed)  # float sums of equal magnitudes must count as ties
    if d.size <= EXACT_MAX:
        patterns = (np.arange(2**d.size)[:, None] >> np.arange(d.size)) & 1
        sums = np.abs((2 * patterns - 1) @ d)
        return float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, _CHUNK):
        signs = rng.choice([-1.0, 1.0], size=(min(_CHUNK, resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + resamples)


def paired_test(a: ArrayLike, b: ArrayLike) -> PairedTest:
    """Whether methods A and B, scored on the same items (and seeds), differ: McNemar's exact test for one
    seed of 0/1 scores, else the sign-flip test of the seed-averaged per-item differences."""
    ma, mb = score_matrix(a), score_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise StatsError(f"paired scores need the same items, got {ma.shape[1]} and {mb.shape[1]}")
    if ma.shape[0] == mb.shape[0] == 1 and is_binary(ma) and is_binary(mb):
        right_a, right_b = ma[0] == 1, mb[0] == 1
        return PairedTest(
            mcnemar_exact(int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))), "mcnemar-exact"
        )
    return PairedTest(sign_flip_test(ma.mean(axis=0) - mb.mean(axis=0)), "sign-flip permutation")
