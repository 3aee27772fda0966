"""Exact tests of a paired 0/1 difference against a margin: guards (non-inferiority) and ``min_gain``.

``H0: Δ ≤ δ0`` with ``Δ = p10 − p01`` (p10: the arm is right where the reference is wrong). A guard tests
``δ0 = −max_drop``; a positive ``min_gain`` tests ``δ0 = +min_gain``. The conditional (McNemar) test does
not extend to δ0 ≠ 0, and the large-sample tests do not hold their size where it matters: at the budget
edge with few discordant prompts the paired t-test passed 5.7 % of gates at α = 5 %, and Tango's
asymptotic score test reaches 5.8–6.2 % (exact sizes, computed by enumeration in the tests).

So the p-value is the *exact unconditional* one, with Tango's score statistic as the ordering:
``p = sup_π P_π(Z ≥ z_obs)`` over the nuisance discordance rate π on the null boundary ``Δ = δ0``.
Conditioning on the number of discordant items D (``D ~ Bin(n, π)``, wins ``| D ~ Bin(D, (π + δ0)/2π)``)
and Tango's Z being increasing in the wins for fixed D makes each P_π a sum of n binomial tails, so the
supremum (a dense grid on π, then a bounded refinement) is cheap. Its size is ≤ α by construction;
inverting it gives the lower confidence bound. Pure numpy/scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

#: Grid points on the nuisance discordance rate before the local refinement.
NUISANCE_GRID = 160
#: Refinements of the grid around its best point.
ZOOMS = 3
BISECTIONS = 48
_TOL = 1e-9


def tango_z(wins, losses, n: int, delta0: float) -> np.ndarray:
    """Tango's (1998) score statistic for ``H0: Δ = δ0`` (vectorized over tables)."""
    wins = np.asarray(wins, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    a = 2.0 * n
    b = -(wins + losses) + (2.0 * n - wins + losses) * delta0
    c = -losses * delta0 * (1.0 - delta0)
    q = (-b + np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)  # restricted MLE of p01
    variance = n * (2.0 * q + delta0 - delta0 * delta0)
    numerator = wins - losses - n * delta0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = numerator / np.sqrt(variance)
    degenerate = np.where(numerator > 0, np.inf, np.where(numerator < 0, -np.inf, 0.0))
    return np.where(variance > 1e-300, z, degenerate)


@lru_cache(maxsize=128)
def _table(n: int, delta0: float) -> np.ndarray:
    """Tango's Z of every table: row D (discordant items), column wins (0..D); NaN where wins > D."""
    wins = np.arange(n + 1)[None, :]
    total = np.arange(n + 1)[:, None]
    z = tango_z(wins, np.maximum(total - wins, 0), n, delta0)
    return np.where(wins <= total, z, np.nan)


def _first_rejecting(n: int, delta0: float, z_obs: float) -> np.ndarray:
    """Per D, the smallest number of wins whose Z is at least the observed one (D + 1: none).

    Z increases with the wins for a fixed D (checked in the tests), so the rejection region of each
    row is its upper tail.
    """
    z = _table(n, delta0)
    with np.errstate(invalid="ignore"):
        extreme = z >= z_obs - _TOL * max(1.0, abs(z_obs))
    return np.where(extreme.any(axis=1), extreme.argmax(axis=1), np.arange(n + 1) + 1)


def _tail(first: np.ndarray, n: int, delta0: float, pi: np.ndarray) -> np.ndarray:
    """``P_π(Z ≥ z_obs)`` for each discordance rate π (on the null boundary Δ = δ0).

    ``Σ_D Bin(D; n, π) · P(wins ≥ first[D] | D)``, wins ``~ Bin(D, (π + δ0)/2π)``; the binomial tail is
    the regularized incomplete beta function ``I_θ(k, D − k + 1)``.
    """
    pi = np.atleast_1d(np.asarray(pi, dtype=np.float64))[:, None]
    d = np.arange(n + 1)[None, :]
    log_choose = special.gammaln(n + 1) - special.gammaln(d + 1) - special.gammaln(n - d + 1)
    weight = np.exp(log_choose + special.xlogy(d, pi) + special.xlog1py(n - d, -pi))
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.clip(np.where(pi > 0, (pi + delta0) / (2.0 * pi), 0.5), 0.0, 1.0)
    k = np.broadcast_to(first[None, :], weight.shape)
    inner = (k >= 1) & (k <= d)
    tail = special.betainc(np.where(inner, k, 1), np.where(inner, d - k + 1, 1), np.broadcast_to(theta, weight.shape))
    conditional = np.where(k <= 0, 1.0, np.where(k > d, 0.0, tail))
    return np.sum(weight * conditional, axis=1)


@lru_cache(maxsize=65536)
def margin_p_value(wins: int, losses: int, n: int, delta0: float) -> float:
    """Exact unconditional p-value of ``H0: Δ ≤ δ0`` given ``wins`` and ``losses`` among ``n`` paired items.

    The supremum over the nuisance π is taken on a grid dense near the boundary's smallest π, then
    zoomed twice around the best point (checked against a brute-force grid in the tests).
    """
    if n == 0:
        return 1.0
    if not -1.0 < delta0 < 1.0:
        return 1.0 if delta0 >= 1.0 else 0.0
    z_obs = float(tango_z(wins, losses, n, delta0))
    first = _first_rejecting(n, delta0, z_obs)
    low = abs(delta0)  # on the boundary p10 = (π + δ0)/2 and p01 = (π − δ0)/2 are both ≥ 0
    grid = low + (1.0 - low) * np.linspace(0.0, 1.0, NUISANCE_GRID) ** 2
    peak = 0.0
    for _ in range(ZOOMS):
        values = _tail(first, n, delta0, grid)
        best = int(np.argmax(values))
        peak = max(peak, float(values[best]))
        left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
        grid = np.linspace(left, right, 41)
    return float(min(1.0, peak))


def margin_lower_bound(wins: int, losses: int, n: int, level: float) -> float:
    """``sup{δ : p(δ) ≤ level}`` by bisection: the bound the margin test inverts to."""
    if n == 0:
        return -math.inf
    low, high = -1.0 + 1e-9, (wins - losses) / n
    if margin_p_value(wins, losses, n, low) > level:
        return -math.inf
    if margin_p_value(wins, losses, n, high) <= level:
        return high
    for _ in range(BISECTIONS):
        mid = 0.5 * (low + high)
        if margin_p_value(wins, losses, n, round(mid, 12)) <= level:
            low = mid
        else:
            high = mid
    return low


class MarginTest:
    """The exact unconditional margin test of one paired 0/1 comparison (wins, losses, n)."""

    name = "exact-unconditional (Tango score)"
    method = "exact"

    def __init__(self, wins: int, losses: int, n: int) -> None:
        self.wins, self.losses, self.n = int(wins), int(losses), int(n)

    def p_value(self, delta0: float) -> float:
        return margin_p_value(self.wins, self.losses, self.n, round(float(delta0), 12))

    def p_value_below(self, delta0: float) -> float:
        """``H0: Δ ≥ δ0`` against ``Δ < δ0``: the same test with wins and losses swapped."""
        return margin_p_value(self.losses, self.wins, self.n, round(-float(delta0), 12))

    def lower_bound(self, level: float) -> float:
        return margin_lower_bound(self.wins, self.losses, self.n, level)

    def upper_bound(self, level: float) -> float:
        return -margin_lower_bound(self.losses, self.wins, self.n, level)
