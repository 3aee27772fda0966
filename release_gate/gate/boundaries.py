"""Group-sequential boundaries for evaluating in looks (SPEC §7): alpha spending and conditional power.

Items are scored in looks at growing fractions ``t_1 < … < t_K = 1`` of each task's limit. A test that
rejects at the first look where its exact p-value falls below a *nominal level* keeps its overall
type-I error at α when the nominal levels come from an alpha-spending function: the Lan–DeMets
O'Brien–Fleming form ``α(t) = 2 − 2Φ(z_{1−α/2}/√t)`` spends almost nothing early (5 · 10⁻⁵ at t = ¼ for
α = 5 %) and leaves the last look close to α (4.2 % with four looks), so a run that goes the whole way
loses little power against the fixed design. The levels are solved for the canonical joint normal of
the look statistics (correlation √(t_i/t_j)) by recursive numerical integration on a grid; with
discrete exact tests the size is at most that of the continuous case (checked by simulation).

Stopping for futility is *non-binding* (the efficacy levels ignore it), so it can only lower the
false-PROMOTE rate: an arm stops when its conditional power under the current trend falls below a
threshold. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

#: Grid step (in units of the final look's standard deviation) of the recursive integration.
GRID_STEP = 0.01
GRID_LOW = -10.0


def obf_spending(alpha: float, t: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type alpha spent by information fraction ``t`` (one-sided α)."""
    if t <= 0:
        return 0.0
    return float(min(alpha, 2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t))))


@lru_cache(maxsize=256)
def nominal_levels(alpha: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """One-sided nominal p-value thresholds per look, spending ``alpha`` by ``fractions`` (last = 1).

    One look gives ``(alpha,)``: the fixed design.
    """
    if not fractions or abs(fractions[-1] - 1.0) > 1e-12 or any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"look fractions must increase to 1, got {fractions}")
    if len(fractions) == 1:
        return (alpha,)
    levels = []
    spent_before = 0.0
    grid = density = None
    previous_t = 0.0
    for t in fractions:
        increment = obf_spending(alpha, t) - spent_before
        spent_before += increment
        sigma = math.sqrt(t - previous_t)
        if grid is None:  # first look: S_1 ~ N(0, t_1), boundary from the spend alone
            bound = math.sqrt(t) * float(stats.norm.isf(max(increment, 1e-300)))
        else:
            bound = _solve_bound(grid, density, sigma, increment)
        levels.append(float(stats.norm.sf(bound / math.sqrt(t))))
        grid, density = _continue(grid, density, sigma, bound)
        previous_t = t
    return tuple(levels)


def _crossing(grid: np.ndarray, density: np.ndarray, sigma: float, bound: float) -> float:
    return float(np.sum(density * stats.norm.sf((bound - grid) / sigma)))


def _solve_bound(grid: np.ndarray, density: np.ndarray, sigma: float, increment: float) -> float:
    """The B-value boundary whose first-crossing probability at this look equals ``increment``."""
    if increment <= 0:
        return math.inf
    return float(optimize.brentq(lambda b: _crossing(grid, density, sigma, b) - increment, -12.0, 40.0, xtol=1e-12))


def _continue(grid: np.ndarray | None, density: np.ndarray | None, sigma: float, bound: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-density (times grid weights) of the B-value on the continuation region below ``bound``."""
    top = min(bound, 12.0)
    edges = np.append(np.arange(GRID_LOW, top, GRID_STEP), top)
    points = 0.5 * (edges[:-1] + edges[1:])  # midpoint rule: second-order accurate
    weights = np.diff(edges)
    if grid is None:
        new = stats.norm.pdf(points / sigma) / sigma
    else:
        kernel = stats.norm.pdf((points[:, None] - grid[None, :]) / sigma) / sigma
        new = kernel @ density
    return points, new * weights


def critical_z(level: float) -> float:
    return float(stats.norm.isf(level))


def conditional_power(z: float, t: float, final_level: float) -> float:
    """Power to pass at the last look if the current trend continues (B-value form).

    ``z`` is the look's standardized estimate (its distance past the threshold in standard errors) at
    information fraction ``t``; the last look needs ``z ≥ critical_z(final_level)``.
    """
    if t >= 1.0:
        return 1.0 if z >= critical_z(final_level) else 0.0
    if math.isinf(z):
        return 1.0 if z > 0 else 0.0
    return float(stats.norm.cdf((z / math.sqrt(t) - critical_z(final_level)) / math.sqrt(1.0 - t)))


def look_sizes(limit: int, fractions: tuple[float, ...]) -> tuple[int, ...]:
    """Items per look for a task of ``limit`` items: ⌈f·limit⌉, at least one new item per look, last = limit."""
    sizes: list[int] = []
    for f in fractions:
        n = min(limit, max(math.ceil(f * limit - 1e-9), (sizes[-1] + 1) if sizes else 1))
        sizes.append(n)
    sizes[-1] = limit
    return tuple(sizes)


def expected_share(fractions: tuple[float, ...], alpha: float, futility: float, drift: float,
                   draws: int = 4000, seed: int = 0) -> float:
    """Expected share of the limit one criterion's arm is evaluated for (normal approximation).

    ``drift`` is the mean of the final look's z statistic (0 under no effect; ``z_{1−α} + z_{0.8}`` at
    the minimum detectable effect). Used to print the expected items before a run.
    """
    levels = nominal_levels(alpha, fractions)
    rng = np.random.default_rng(seed)
    increments = np.diff(np.r_[0.0, fractions])
    b_values = np.cumsum(rng.normal(0.0, 1.0, (draws, len(fractions))) * np.sqrt(increments), axis=1)
    b_values += drift * np.asarray(fractions)
    stop_share = np.ones(draws)
    stopped = np.zeros(draws, dtype=bool)
    for k, t in enumerate(fractions[:-1]):
        z = b_values[:, k] / math.sqrt(t)
        cp = stats.norm.cdf((z / math.sqrt(t) - critical_z(levels[-1])) / math.sqrt(1.0 - t))
        stop = ~stopped & ((z >= critical_z(levels[k])) | (cp < futility))
        stop_share[stop] = t
        stopped |= stop
    return float(stop_share.mean())
