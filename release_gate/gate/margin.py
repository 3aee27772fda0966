"""Exact tests of a paired 0/1 difference against ONE reference: McNemar, and margins (guards, ``min_gain``).

``Δ = p10 − p01`` (p10: the arm is right where the reference is wrong). ``Δ > 0`` (beats baseline, beats
one control seed) is the exact McNemar test: ``binomtest`` on the discordant items. A margin ``Δ > δ0``
with δ0 ≠ 0 (a guard tests ``δ0 = −max_drop``, a positive ``min_gain`` ``δ0 = +min_gain``) is not
McNemar's: the conditional test does not extend to δ0 ≠ 0, and the large-sample tests do not hold their
size where it matters: at the budget edge with few discordant prompts the paired t-test passed 5.7 % of
gates at α = 5 %, and Tango's asymptotic score test reaches 5.8–6.2 % (exact sizes, computed by
enumeration in the tests).

So a margin's p-value is the *exact unconditional* one, with Tango's score statistic as the ordering:
``p = sup_π P_π(Z ≥ z_obs)`` over the nuisance discordance rate π on the null boundary ``Δ = δ0``.
Conditioning on the number of discordant items D (``D ~ Bin(n, π)``, wins ``| D ~ Bin(D, (π + δ0)/2π)``)
and Tango's Z being increasing in the wins for fixed D makes each P_π a sum of n binomial tails, so the
supremum (a dense grid on π, then a bounded refinement) is cheap. Its size is ≤ α by construction. Both
tests are exact at a fixed n (``anytime = False``); their bounds are inverted in :mod:`.evidence`.
Pure numpy/scipy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import special, stats

#: Grid points on the nuisance discordance rate before the local refinement.
NUISANCE_GRID = 160
#: Refinements of the grid around its best point.
ZOOMS = 3
#: Binomial weights of the discordant count below which its term is dropped from a tail sum.
NEGLIGIBLE = 1e-16
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


def _first_rejecting(n: int, delta0: float, z_obs: float) -> np.ndarray:
    """Per D, the smallest number of wins whose Z is at least the observed one (D + 1: none).

    Z increases with the wins for a fixed D (checked in the tests), so the rejection region of each
    row is its upper tail, found by a binary search per row (all rows at once).
    """
    total = np.arange(n + 1)
    low, high = np.zeros(n + 1, dtype=np.int64), total + 1
    threshold = z_obs - _TOL * max(1.0, abs(z_obs))
    while np.any(low < high):
        mid = np.minimum((low + high) // 2, total)
        extreme = tango_z(mid, total - mid, n, delta0) >= threshold
        open_ = low < high
        high = np.where(open_ & extreme, mid, high)
        low = np.where(open_ & ~extreme, mid + 1, low)
    return low


def _tail(first: np.ndarray, n: int, delta0: float, pi: np.ndarray) -> np.ndarray:
    """``P_π(Z ≥ z_obs)`` for each discordance rate π (on the null boundary Δ = δ0).

    ``Σ_D Bin(D; n, π) · P(wins ≥ first[D] | D)``, wins ``~ Bin(D, (π + δ0)/2π)``; the binomial tail is
    the regularized incomplete beta function ``I_θ(k, D − k + 1)``.
    """
    pi = np.atleast_1d(np.asarray(pi, dtype=np.float64))[:, None]
    d = np.arange(n + 1)[None, :]
    log_choose = special.gammaln(n + 1) - special.gammaln(d + 1) - special.gammaln(n - d + 1)
    weight = np.exp(log_choose + special.xlogy(d, pi) + special.xlog1py(n - d, -pi))
    used = weight.max(axis=0) > NEGLIGIBLE  # counts of D no π on the grid makes likely: their terms are ~0
    weight, d, first = weight[:, used], d[:, used], first[used]
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.clip(np.where(pi > 0, (pi + delta0) / (2.0 * pi), 0.5), 0.0, 1.0)
    k = np.broadcast_to(first[None, :], weight.shape)
    dd = np.broadcast_to(d, weight.shape)
    inner = (k >= 1) & (k <= dd) & (weight > 0)
    conditional = (k <= 0).astype(np.float64)  # every count of wins rejects: 1; none (k > D): 0
    conditional[inner] = special.betainc(k[inner], (dd - k + 1)[inner], np.broadcast_to(theta, weight.shape)[inner])
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


class MarginTest:
    """The exact unconditional margin test of one paired 0/1 comparison (wins, losses, n)."""

    name = "exact-unconditional (Tango score)"
    method = "exact"
    anytime = False
    span = (-1.0, 1.0)

    def __init__(self, wins: int, losses: int, n: int) -> None:
        self.wins, self.losses, self.n = int(wins), int(losses), int(n)

    def p_value(self, delta0: float) -> float:
        return margin_p_value(self.wins, self.losses, self.n, round(float(delta0), 12))

    def p_value_below(self, delta0: float) -> float:
        """``H0: Δ ≥ δ0`` against ``Δ < δ0``: the same test with wins and losses swapped."""
        return type(self)(self.losses, self.wins, self.n).p_value(-delta0)


class McNemarTest(MarginTest):
    """Exact McNemar at δ0 = 0: ``P(Bin(wins + losses, ½) ≥ wins)``; the margin test at any other δ0
    (so the bound it inverts to is the margin test's, decided at 0 by McNemar)."""

    name = "exact McNemar"

    def p_value(self, delta0: float) -> float:
        if delta0 != 0.0:
            return super().p_value(delta0)
        discordant = self.wins + self.losses
        return float(stats.binom.sf(self.wins - 1, discordant, 0.5)) if discordant else 1.0
