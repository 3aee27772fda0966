"""Small statistics for planning and reporting: Holm, minimum detectable effects, per-arm intervals.

The gate's *tests* live in :mod:`.permutation` and :mod:`.margin` (exact at any n); this module holds
the normal-approximation planning numbers printed before a run (what effect ``n`` items can show at
80 % power) and descriptive intervals. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

#: Power the minimum detectable effect is quoted at.
POWER = 0.8
#: Planning assumption before any score exists: the share of items on which two
#: adapters of the same task disagree (per-item difference variance ≈ discordance
#: for 0/1 metrics). Reported as such; the observed value replaces it after the run.
PLANNED_DISCORDANCE = 0.25


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def z_for_power(alpha: float, power: float = POWER) -> float:
    """``z_{1−α} + z_{power}``: the standardized effect a one-sided level-α test detects with ``power``."""
    return float(stats.norm.isf(alpha) + stats.norm.ppf(power))


def mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Smallest true mean difference a one-sided paired test at ``alpha`` detects with ``power``.

    Normal approximation: ``(z_{1−α} + z_{power}) · sd / √n``; infinite for n < 2.
    """
    if n < 2:
        return math.inf
    return z_for_power(alpha, power) * sd / math.sqrt(n)


def planned_mde(n: int, alpha: float, discordance: float = PLANNED_DISCORDANCE) -> float:
    """MDE before any score exists, assuming ``discordance`` (0/1 metrics: sd(d) ≈ √discordance)."""
    return mde(math.sqrt(discordance), n, alpha)


def observed_mde(spreads: Sequence[tuple[float, int]], alpha: float) -> float:
    """MDE with the per-item spread observed in paired comparisons on one task.

    ``spreads`` holds ``(se, n)`` of each comparison; their per-item variances ``se²·n`` are pooled.
    """
    finite = [(se, n) for se, n in spreads if not math.isinf(se) and n > 1]
    if not finite:
        return math.inf
    return mde(math.sqrt(float(np.mean([se**2 * n for se, n in finite]))), finite[0][1], alpha)


def items_for_power(effect: float, se: float, n: int, level: float, power: float = POWER) -> float:
    """Items at which a one-sided level test detects ``effect`` with ``power``, from the spread seen at ``n``."""
    if effect <= 0 or math.isinf(se) or n < 1:
        return math.inf
    sd = se * math.sqrt(n)
    if sd == 0.0:
        return float(n)
    return (z_for_power(level, power) * sd / effect) ** 2


def mean_interval(values: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """Mean, standard error and two-sided (1 − 2α) interval of one arm's scores on a task.

    0/1 scores get the exact Clopper–Pearson interval; other scores Student's t.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.inf, -math.inf, math.inf
    se = float(values.std(ddof=1) / math.sqrt(n))
    if set(np.unique(values).tolist()) <= {0.0, 1.0}:
        interval = stats.binomtest(int(values.sum()), n).proportion_ci(1 - 2 * alpha, method="exact")
        return mean, se, float(interval.low), float(interval.high)
    half = float(stats.t.ppf(1.0 - alpha, n - 1)) * se
    return mean, se, mean - half, mean + half


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (simulation summaries)."""
    if trials == 0:
        return 0.0, 1.0
    z = float(stats.norm.isf((1 - confidence) / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
