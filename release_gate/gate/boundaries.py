"""Group-sequential boundaries for evaluating in looks (SPEC §7): alpha spending and conditional power.

Items are scored in looks at growing *information times* ``t`` (``t = n / N``, ``N`` each task's limit
in the gate's first run). A test that rejects at the first look where its exact p-value falls below a
*nominal level* keeps its overall type-I error at α when the nominal levels come from an alpha-spending
function. The first run spends ``α(1 − ρ)`` by ``t = 1`` in the Lan–DeMets O'Brien–Fleming form
``2 − 2Φ(z_{1−α'/2}/√t)`` (α' = α(1 − ρ)): almost nothing early, close to α' at its last look. Later
runs of the same gate (the limits raised after INCONCLUSIVE) look at ``t > 1`` and spend the reserve
``ρ`` (``gate.rerun_reserve``) as ``α(1 − ρ) + αρ(1 − 1/t)``: never more than α in all, however many
re-runs follow, and a re-run continues the spending instead of starting afresh. The levels are solved
for the canonical joint normal of the look statistics (correlation √(t_i/t_j)) by recursive numerical
integration over every look so far, old and new; with discrete exact tests the size is at most that of
the continuous case (checked by simulation). When looks are assigned times whose ratios are at least
the ratios of the items behind every statistic (see :func:`continued_times`), the true correlations are
at least the canonical ones, and Slepian's inequality keeps the crossing probability at most α.

Stopping for futility is *non-binding* (the efficacy levels ignore it), so it can only lower the
false-PROMOTE rate: an arm stops when its conditional power under the current trend falls below a
threshold. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, signal, special, stats

#: Grid step (in units of the final look's standard deviation) of the recursive integration.
GRID_STEP = 0.01
GRID_LOW = -10.0


def obf_spending(alpha: float, t: float) -> float:
    """Lan–DeMets O'Brien–Fleming-type alpha spent by information fraction ``t`` (one-sided α)."""
    if t <= 0:
        return 0.0
    return float(min(alpha, 2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t))))


def spent(alpha: float, reserve: float, t: float) -> float:
    """α spent by information time ``t``: O'Brien–Fleming to ``α(1 − ρ)`` at t = 1, the reserve ρ beyond."""
    first = alpha * (1.0 - reserve)
    if t <= 1.0:
        return obf_spending(first, t)
    return first + alpha * reserve * (1.0 - 1.0 / t)


def nominal_levels(alpha: float, times: tuple[float, ...], reserve: float = 0.0) -> tuple[float, ...]:
    """One-sided nominal p-value thresholds of looks at information ``times`` (increasing, > 0).

    ``times`` are every look of the gate so far, earlier runs' included: a look's level depends only
    on the looks before it, so an earlier run's levels are reproduced exactly (and cached: a re-run
    integrates only its own looks). One look at t = 1 with no reserve gives ``(alpha,)``: the fixed design.
    """
    if not times or times[0] <= 0 or any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"look times must increase from above 0, got {times}")
    return tuple(_look(float(alpha), float(reserve), tuple(times[:k + 1]))[0] for k in range(len(times)))


@lru_cache(maxsize=4096)
def _look(alpha: float, reserve: float, times: tuple[float, ...]) -> tuple[float, _Mass]:
    """The last look's nominal level, and the B-value's sub-density on the continuation region after it."""
    t = times[-1]
    if len(times) == 1:  # first look: S_1 ~ N(0, t_1), the level is the spend itself
        level = spent(alpha, reserve, t)
        bound = math.sqrt(t) * float(stats.norm.isf(max(level, 1e-300)))
        return level, _continue(None, math.sqrt(t), bound, math.sqrt(t))
    _, mass = _look(alpha, reserve, times[:-1])
    sigma = math.sqrt(t - times[-2])
    bound = _solve_bound(mass, sigma, spent(alpha, reserve, t) - spent(alpha, reserve, times[-2]))
    return float(stats.norm.sf(bound / math.sqrt(t))), _continue(mass, sigma, bound, math.sqrt(t))


def continued_times(last: tuple[dict[str, int], float], sizes: list[dict[str, int]]) -> list[float]:
    """Information times of further looks at ``sizes`` after a look at ``last`` = (items per task, time).

    Each look multiplies the time by the largest growth of any task's items, so the ratio of two
    looks' times is never below the ratio of the items behind any criterion (a task's mean, or a
    weighted mean over tasks): the canonical correlations are then at most the true ones, which keeps
    the spending valid when the tasks' limits are raised unevenly. Every look must add items.
    """
    previous, t = last
    out = []
    for look in sizes:
        growth = max(look[task] / previous[task] for task in look)
        if growth <= 1.0:
            raise ValueError(f"a look must add items to some task: {look} after {previous}")
        t *= growth
        out.append(t)
        previous = look
    return out


@dataclass(frozen=True)
class _Mass:
    """The B-value's probability mass still below every boundary, on a grid of cells.

    Whole cells ``[i·step, (i+1)·step)`` for ``i`` from ``GRID_LOW / GRID_STEP`` on, each mass at its
    midpoint, then the cell cut at the boundary (``cut``: its midpoint and mass; none if the boundary
    is on a cell edge).
    """

    step: float
    whole: np.ndarray
    cut: tuple[float, float] | None

    @property
    def low(self) -> int:
        return round(GRID_LOW / GRID_STEP)

    @property
    def points(self) -> np.ndarray:
        centres = self.step * (np.arange(self.low, self.low + self.whole.size) + 0.5)
        return centres if self.cut is None else np.append(centres, self.cut[0])

    @property
    def masses(self) -> np.ndarray:
        return self.whole if self.cut is None else np.append(self.whole, self.cut[1])


def _solve_bound(mass: _Mass, sigma: float, increment: float) -> float:
    """The B-value boundary whose first-crossing probability at this look equals ``increment``."""
    if increment <= 0:
        return math.inf
    points, masses = mass.points, mass.masses

    def excess(bound: float) -> float:  # P(cross here) − increment; ndtr is the normal cdf without scipy.stats' checks
        return float(np.dot(masses, special.ndtr((points - bound) / sigma))) - increment

    return float(optimize.brentq(excess, float(points[0]) - 12.0 * sigma, float(points[-1]) + 40.0 * sigma, xtol=1e-12))


def _unit(scale: float) -> float:
    """Grid unit at a look whose B-value has standard deviation ``scale``: 1 up to t = 1, then powers of 2."""
    return float(2 ** max(0, math.ceil(math.log2(scale) - 1e-12))) if scale > 1.0 else 1.0


def _continue(mass: _Mass | None, sigma: float, bound: float, scale: float) -> _Mass:
    """The mass below ``bound`` after a step of spread ``sigma`` from ``mass`` (or from 0 at the first look).

    Cells are ``GRID_STEP · unit`` wide, the unit growing in powers of 2 with the B-value's spread
    ``scale``, so looks far beyond t = 1 keep the same number of cells; coarser cells take the finer ones
    whole (they nest). Between whole cells the transition kernel depends only on their distance, so the
    step is one FFT convolution (midpoint rule: second-order accurate); the cut cells are added exactly.
    """
    step = GRID_STEP * _unit(scale)
    top = min(bound, 12.0 * _unit(scale))
    low = round(GRID_LOW / GRID_STEP)
    full = max(low, math.floor(top / step + 1e-9))
    count = full - low
    centres = step * (np.arange(low, full) + 0.5)
    cut_point = 0.5 * (full * step + top) if top - full * step > 1e-9 * step else None

    def kernel(x: np.ndarray | float) -> np.ndarray:  # the N(0, σ²) density
        return np.exp(-0.5 * (np.asarray(x) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))

    if mass is None:
        whole = kernel(centres) * step
        cut = None if cut_point is None else (cut_point, float(kernel(cut_point)) * (top - full * step))
        return _Mass(step, whole, cut)
    ratio = round(step / mass.step)
    cells = np.arange(low, low + mass.whole.size) // ratio - low  # the coarser cell each finer one falls in
    lattice = np.bincount(cells, weights=mass.whole)
    size = lattice.size
    density = signal.fftconvolve(lattice, kernel(np.arange(-size + 1, count) * step))[size - 1:size - 1 + count]
    if mass.cut is not None:
        density = density + kernel(centres - mass.cut[0]) * mass.cut[1]
    whole = np.maximum(density, 0.0) * step
    cut = None
    if cut_point is not None:
        cut = (cut_point, float(np.sum(kernel(cut_point - mass.points) * mass.masses)) * (top - full * step))
    return _Mass(step, whole, cut)


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
