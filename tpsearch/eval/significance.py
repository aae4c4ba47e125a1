"""Is a difference between two rankings of the same queries real? Paired tests over per-query
scores.

Two systems scored on the same queries give paired per-query values (nDCG@10 here). Their mean
difference comes with

- a percentile bootstrap interval: the mean difference over queries resampled with replacement,
  ``rounds`` times (Sakai, "Evaluating evaluation metrics based on the bootstrap", SIGIR 2006);
- a two-sided paired randomisation test: each query's difference flips sign at random, and the
  p-value is the share of flips whose mean is at least as far from zero as the observed one
  (Smucker, Allan and Carterette, CIKM 2007, who recommend it for IR over the t-test).

Both are seeded, so a report is the same each time it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError

ROUNDS = 10_000


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over the queries, its bootstrap interval and the randomisation test's
    two-sided p-value."""

    mean: float
    low: float
    high: float
    p_value: float
    queries: int
    level: float = 0.95

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def describe(self, scale: float = 100.0) -> str:
        return describe(self.mean, self.low, self.high, self.p_value, scale)


def describe(mean: float, low: float, high: float, p_value: float, scale: float = 100.0) -> str:
    """e.g. ``+0.42 [-0.31, +1.18] p 0.27`` (the difference and interval times ``scale``)."""
    m, lo, hi = (scale * v for v in (mean, low, high))
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] p {p_value:.3f}"


def paired_difference(a: Sequence[float], b: Sequence[float], rounds: int = ROUNDS,
                      level: float = 0.95, seed: int = 0) -> PairedDifference:
    """``a[i]`` and ``b[i]`` are query ``i``'s scores under two systems."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"paired scores need one value per query on both sides, got "
                         f"shapes {a.shape} and {b.shape}")
    x = a - b
    if len(x) < 2:
        raise InputError(f"a paired test needs at least 2 queries, got {len(x)}")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    n = len(x)
    means = np.empty(rounds)
    flipped = np.empty(rounds)
    for start in range(0, rounds, 1000):  # bounded memory: 1000 resamples at a time
        m = min(1000, rounds - start)
        means[start:start + m] = x[rng.integers(0, n, size=(m, n))].mean(axis=1)
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        flipped[start:start + m] = (signs * x).mean(axis=1)
    observed = x.mean()
    tail = (1.0 - level) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    # the observed assignment counts as one of the flips (so p is never 0)
    p = (1 + np.count_nonzero(np.abs(flipped) >= abs(observed) - 1e-12)) / (rounds + 1)
    return PairedDifference(float(observed), float(low), float(high), float(p), n, level)
