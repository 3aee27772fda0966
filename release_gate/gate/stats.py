"""Paired statistics for the gate (SPEC §7): pure numpy/scipy, no I/O, no torch.

Every arm is scored on the same items, so comparisons are *paired*: the
per-item difference ``d_i`` removes item difficulty, which is most of the
variance. Bounds are one-sided Student-t bounds on the mean difference
(``df = n − 1``; Welch–Satterthwaite when tasks are combined), which is the
paired t-test and, for 0/1 metrics, the large-sample McNemar test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Power the minimum detectable effect is quoted at.
POWER = 0.8
#: Planning assumption before any score exists: the share of items on which two
#: adapters of the same task disagree (per-item difference variance ≈ discordance
#: for 0/1 metrics). Reported as such; the observed value replaces it after the run.
PLANNED_DISCORDANCE = 0.25


@dataclass(frozen=True)
class Estimate:
    """A mean difference with its standard error and degrees of freedom.

    ``se`` is infinite when fewer than two items exist: nothing can then be
    claimed with confidence. ``discordant`` counts items whose scores differ
    (``None`` for combined estimates).
    """

    delta: float
    se: float
    n: int
    df: float
    discordant: int | None = None

    def lower(self, alpha: float) -> float:
        """One-sided (1 − α) lower confidence bound."""
        return self.delta - _t_quantile(alpha, self.df) * self.se

    def upper(self, alpha: float) -> float:
        """One-sided (1 − α) upper confidence bound."""
        return self.delta + _t_quantile(alpha, self.df) * self.se

    def p_above(self, threshold: float) -> float:
        """One-sided p-value of H0: true Δ ≤ ``threshold`` against H1: Δ > ``threshold``.

        ``p < α`` exactly when :meth:`lower` ``> threshold``. With zero spread
        (every item moved by the same amount) the t statistic is undefined;
        the p-value is then the sign test's, ``0.5ⁿ``, so three improved items
        out of three are not proof of anything.
        """
        if math.isinf(self.se):
            return 1.0
        if self.se == 0.0:
            return 0.5**self.n if self.delta > threshold else 1.0
        return float(stats.t.sf((self.delta - threshold) / self.se, self.df))


def _t_quantile(alpha: float, df: float) -> float:
    return float(stats.t.ppf(1.0 - alpha, df)) if df > 0 else math.inf


def paired(arm: np.ndarray, reference: np.ndarray) -> Estimate:
    """Paired difference ``arm − reference`` over the same items (same order)."""
    arm = np.asarray(arm, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if arm.shape != reference.shape or arm.ndim != 1:
        raise ValueError(f"paired scores must be two equal-length vectors, got {arm.shape} and {reference.shape}")
    d = arm - reference
    n = int(d.size)
    if n < 2:
        return Estimate(float(d.mean()) if n else 0.0, math.inf, n, 0.0, int(np.count_nonzero(d)))
    se = float(d.std(ddof=1) / math.sqrt(n))
    return Estimate(float(d.mean()), se, n, float(n - 1), int(np.count_nonzero(np.abs(d) > 1e-12)))


def weighted(estimates: Sequence[Estimate], weights: Sequence[float]) -> Estimate:
    """Weighted mean of independent task estimates (weights normalised to sum 1).

    Variances add with squared weights; degrees of freedom follow
    Welch–Satterthwaite so a small task keeps its small-sample penalty.
    """
    if not estimates or len(estimates) != len(weights):
        raise ValueError("weighted: need one weight per estimate")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weighted: weights must sum to a positive number")
    w = [float(x) / total for x in weights]
    delta = sum(wi * e.delta for wi, e in zip(w, estimates))
    parts = [(wi * e.se) ** 2 for wi, e in zip(w, estimates) if wi > 0]
    variance = sum(parts)
    n = min(e.n for e, wi in zip(estimates, w) if wi > 0)
    if math.isinf(variance):
        return Estimate(delta, math.inf, n, 0.0)
    dfs = [e.df for e, wi in zip(estimates, w) if wi > 0]
    denominator = sum(p**2 / df for p, df in zip(parts, dfs) if p > 0)
    df = variance**2 / denominator if denominator > 0 else min(dfs)
    return Estimate(delta, math.sqrt(variance), n, df)


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


def mde(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """Smallest true mean difference a one-sided paired test at ``alpha`` detects with ``power``.

    Normal approximation: ``(z_{1−α} + z_{power}) · sd / √n``; infinite for n < 2.
    """
    if n < 2:
        return math.inf
    return float((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) * sd / math.sqrt(n))


def planned_mde(n: int, alpha: float, discordance: float = PLANNED_DISCORDANCE) -> float:
    """MDE before any score exists, assuming ``discordance`` (0/1 metrics: sd(d) ≈ √discordance)."""
    return mde(math.sqrt(discordance), n, alpha)


def observed_mde(estimates: Sequence[Estimate], alpha: float) -> float:
    """MDE with the spread observed in paired comparisons on one task (variances pooled over them)."""
    finite = [e for e in estimates if not math.isinf(e.se)]
    if not finite:
        return math.inf
    return mde(math.sqrt(float(np.mean([e.se**2 * e.n for e in finite]))), finite[0].n, alpha)


def mean_interval(values: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """Mean, standard error and two-sided (1 − 2α) interval of one arm's scores on a task."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.inf, -math.inf, math.inf
    se = float(values.std(ddof=1) / math.sqrt(n))
    half = _t_quantile(alpha, n - 1) * se
    return mean, se, mean - half, mean + half
