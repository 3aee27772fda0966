"""The paired permutation test of the gate's superiority criteria: exact at any n (SPEC §7).

Every arm is scored on the same items. Under the null hypothesis "the variant is no better than the
reference arms", the variant's label is exchangeable with theirs on every item, so relabelling items
independently gives the exact null distribution of the (weighted) mean difference
``T = Σ_i ω_i (v_i − mean_j c_ij)``. Against one reference (``baseline``, one control seed) this is the
sign-flip test, which for a 0/1 metric *is* the exact McNemar test (``binomtest`` on the discordant
items). Against the seed mean of K random controls the variant trades places with one of the K + 1
arms per item, so the test stays exact when the controls are themselves random draws of an edit (the
sign-flip test on ``v − mean c`` is not: its per-item differences are skewed, measured 5.3 % at α = 5 %).

Shifting the variant by δ (testing ``H0: Δ ≤ δ``) turns the relabelled minus observed statistic into
``A + δ·B`` with ``A = Σ ω_i [s_i ≠ 0](c_{i,s_i} − v_i)`` and ``B = Σ ω_i [s_i ≠ 0]``: so one null
distribution of (A, B) gives the p-value at every δ, and its inversion gives the lower confidence
bound, which can therefore never disagree with the p-value (``lcb > δ ⟺ p(δ) ≤ level``).

The (A, B) distribution is computed exactly by dynamic programming when all items share one weight and
the scores lie on a lattice (0/1 and other discrete metrics on one task); otherwise by seeded Monte
Carlo with ``(1 + hits) / (1 + draws)`` p-values (valid at any number of draws; method and draws are
reported). Pure numpy/scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import stats

#: Relabellings drawn when the exact distribution is not available (non-lattice scores, several task weights).
MONTE_CARLO_DRAWS = 20_000
MONTE_CARLO_SEED = 20_241_126
#: Largest lattice (|A| values × |B| values) the exact path builds before falling back to Monte Carlo.
MAX_LATTICE_CELLS = 4_000_000
#: Scores are on a lattice when ``value × scale`` is an integer for one of these scales (0/1, thirds, …).
LATTICE_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 100)
_TOL = 1e-9
BISECTIONS = 60


@dataclass(frozen=True)
class PairedData:
    """Oriented per-item scores of one arm and its reference arm(s), with per-item weights and strata.

    ``variant`` has shape (n,), ``references`` (n, K). ``weights`` sum to one over the items (a task's
    weight divided by its n), so ``delta`` is the weighted mean difference the gate reports; ``strata``
    names each item's task (the descriptive standard error is pooled within tasks).
    """

    variant: np.ndarray
    references: np.ndarray
    weights: np.ndarray
    strata: np.ndarray

    @classmethod
    def of(cls, variant, references, weights=None, strata=None) -> PairedData:
        v = np.asarray(variant, dtype=np.float64)
        c = np.asarray(references, dtype=np.float64)
        c = c.reshape(v.size, -1) if c.ndim != 2 else c
        if c.shape[0] != v.size or v.ndim != 1:
            raise ValueError(f"paired scores must align: variant {v.shape}, references {c.shape}")
        w = np.full(v.size, 1.0 / max(v.size, 1)) if weights is None else np.asarray(weights, dtype=np.float64)
        s = np.zeros(v.size, dtype=np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
        return cls(v, c, w, s)

    @property
    def n(self) -> int:
        return int(self.variant.size)

    @property
    def k(self) -> int:
        return int(self.references.shape[1])

    @cached_property
    def differences(self) -> np.ndarray:
        """Per-item ``v − mean c``."""
        return self.variant - self.references.mean(axis=1)

    @property
    def delta(self) -> float:
        return float(np.dot(self.weights, self.differences)) if self.n else 0.0

    @property
    def discordant(self) -> int:
        """Items on which the arms do not all agree."""
        return int(np.count_nonzero(np.any(np.abs(self.references - self.variant[:, None]) > _TOL, axis=1)))

    @property
    def se(self) -> float:
        """Descriptive standard error of ``delta`` (per-task spread, pooled by weight); not used by the test."""
        variance = 0.0
        for stratum in np.unique(self.strata):
            members = self.strata == stratum
            d, w = self.differences[members], self.weights[members]
            if d.size < 2:
                return math.inf
            variance += float(np.sum(w**2 * (d - d.mean()) ** 2)) * d.size / (d.size - 1)
        return math.sqrt(variance) if self.n else math.inf

    def negated(self) -> PairedData:
        """The same comparison seen from the other side (for upper bounds)."""
        return PairedData(-self.variant, -self.references, self.weights, self.strata)


@dataclass(frozen=True)
class NullDistribution:
    """The relabelling distribution of ``(A, B)``; ``p(δ) = P(A + δ·B ≥ 0)``.

    Exact form: atoms over the items where the arms disagree, plus ``ties`` items (all arms equal) that
    each add ``tie_weight·δ`` with probability ``tie_chance`` (a binomial count, applied analytically).
    Monte Carlo form: one atom per drawn relabelling (ties included), each of probability ``1/draws``.
    """

    a: np.ndarray
    b: np.ndarray
    prob: np.ndarray
    method: str
    ties: int = 0
    tie_weight: float = 0.0
    tie_chance: float = 0.0
    draws: int = 0
    seed: int | None = None
    span: tuple[float, float] = (-1.0, 1.0)

    def p_value(self, delta0: float = 0.0) -> float:
        """One-sided p-value of ``H0: Δ ≤ delta0`` (ties of the statistic count against H0's rejection)."""
        if self.method == "monte_carlo":
            hits = np.count_nonzero(self.a + delta0 * self.b >= -_TOL * (1 + abs(delta0)))
            return float((1 + hits) / (1 + self.draws))
        if self.ties == 0 or delta0 == 0.0:
            return float(min(1.0, self.prob[self.a + delta0 * self.b >= -_TOL].sum()))
        # ties add tie_weight·δ·Bin(ties, tie_chance): need Bin ≥ −(a + δb)/(δ·w) (δ > 0) or ≤ (a + δb)/(|δ|·w)
        base = self.a + delta0 * self.b
        limit = -base / (delta0 * self.tie_weight)
        if delta0 > 0:
            counts = np.ceil(limit - _TOL)
            tail = stats.binom.sf(counts - 1, self.ties, self.tie_chance)
        else:
            counts = np.floor(limit + _TOL)
            tail = stats.binom.cdf(counts, self.ties, self.tie_chance)
        return float(min(1.0, np.dot(self.prob, tail)))

    def lower_bound(self, level: float) -> float:
        """``sup{δ : p(δ) ≤ level}``: the one-sided (1 − level) bound the test inverts to.

        ``p`` is non-decreasing in δ, so ``bound > δ`` exactly when the test rejects ``Δ ≤ δ``.
        Returns ``-inf`` when not even the smallest possible Δ is rejected.
        """
        low, high = self.span
        if self.p_value(low) > level:
            return -math.inf
        if self.p_value(high) <= level:
            return high
        for _ in range(BISECTIONS):
            mid = 0.5 * (low + high)
            if self.p_value(mid) <= level:
                low = mid
            else:
                high = mid
        return low


@dataclass
class PermutationTest:
    """The paired permutation test of one comparison; distributions are built on first use."""

    data: PairedData
    draws: int = MONTE_CARLO_DRAWS
    seed: int = MONTE_CARLO_SEED
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return "permutation" if self.data.k > 1 else "sign-flip"

    def p_value(self, delta0: float = 0.0) -> float:
        if delta0 == 0.0 and self.data.k == 1 and _binary_steps(self.data):
            return _mcnemar(self.data)
        return self._distribution(delta0 != 0.0).p_value(delta0)

    def p_value_below(self, delta0: float) -> float:
        """``H0: Δ ≥ δ0`` against ``Δ < δ0``: the test of the negated comparison."""
        return self._negated().p_value(-delta0)

    def lower_bound(self, level: float) -> float:
        return self._distribution(True).lower_bound(level)

    def upper_bound(self, level: float) -> float:
        return -self._negated().lower_bound(level)

    def _negated(self) -> PermutationTest:
        if "negated" not in self._cache:
            self._cache["negated"] = PermutationTest(self.data.negated(), self.draws, self.seed)
        return self._cache["negated"]

    @property
    def method(self) -> str:
        """``exact`` or ``monte_carlo(draws=…, seed=…)``: how the p-values were computed."""
        if self.data.k == 1 and _binary_steps(self.data) and True not in self._cache and False not in self._cache:
            return "exact"
        built = self._distribution(False)
        return "exact" if built.method == "exact" else f"monte_carlo(draws={built.draws}, seed={built.seed})"

    def _distribution(self, with_shift: bool) -> NullDistribution:
        if True in self._cache:
            return self._cache[True]
        if not with_shift and False in self._cache:
            return self._cache[False]
        self._cache[with_shift] = null_distribution(self.data, with_shift, self.draws, self.seed)
        return self._cache[with_shift]


def _binary_steps(data: PairedData) -> bool:
    d = data.variant[:, None] - data.references
    return bool(np.all(np.isin(np.round(d, 12), (-1.0, 0.0, 1.0)))) and _equal_weights(data.weights)


def _mcnemar(data: PairedData) -> float:
    """Exact McNemar: ``P(Bin(wins + losses, ½) ≥ wins)`` — the sign-flip test of 0/1 differences."""
    d = np.round(data.variant - data.references[:, 0], 12)
    wins, losses = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
    return float(stats.binom.sf(wins - 1, wins + losses, 0.5)) if wins + losses else 1.0


def _equal_weights(weights: np.ndarray) -> bool:
    return bool(weights.size == 0 or np.allclose(weights, weights[0], rtol=1e-12, atol=0.0))


def _lattice_scale(values: np.ndarray) -> int | None:
    for scale in LATTICE_SCALES:
        scaled = values * scale
        if np.allclose(scaled, np.round(scaled), rtol=0.0, atol=1e-9):
            return scale
    return None


def null_distribution(data: PairedData, with_shift: bool, draws: int = MONTE_CARLO_DRAWS,
                      seed: int = MONTE_CARLO_SEED) -> NullDistribution:
    """Exact (one weight, lattice scores) or Monte Carlo null distribution of ``(A, B)``."""
    steps = data.references - data.variant[:, None]  # c_ij − v_i for every relabelling s_i = j
    scores = np.concatenate([data.variant, data.references.ravel()])
    reach = max(float(np.ptp(scores)) if scores.size else 0.0, 1.0)  # Δ's range (0–1 metrics: ±1)
    span = (-reach, reach)
    if data.n == 0:
        return NullDistribution(np.zeros(1), np.zeros(1), np.ones(1), "exact", span=span)
    scale = _lattice_scale(steps)
    if scale is not None and _equal_weights(data.weights):
        exact = _exact(np.round(steps * scale).astype(np.int64), scale, data.k, with_shift, span)
        if exact is not None:
            return exact
    return _monte_carlo(steps, data.weights, draws, seed, span)


def _exact(steps: np.ndarray, scale: int, k: int, with_shift: bool, span: tuple[float, float]
           ) -> NullDistribution | None:
    """Dynamic programming over the disagreeing items; (A in lattice units, B = relabelled count)."""
    tied = np.all(steps == 0, axis=1)
    active = steps[~tied]
    low, high = int(np.minimum(active.min(axis=1, initial=0), 0).sum()), int(np.maximum(active.max(axis=1, initial=0), 0).sum())
    width = high - low + 1
    depth = active.shape[0] + 1 if with_shift else 1
    if width * depth > MAX_LATTICE_CELLS:
        return None
    dist = np.zeros((width, depth))
    dist[-low, 0] = 1.0
    stay = 1.0 / (k + 1)
    for row in active:
        new = stay * dist
        for value, count in zip(*np.unique(row, return_counts=True)):
            moved = _shift(dist, int(value), 1 if with_shift else 0)
            new += (count / (k + 1)) * moved
        dist = new
    a_index, b_index = np.nonzero(dist > 0)
    unit = 1.0 / scale
    return NullDistribution(
        a=(a_index + low) * unit, b=b_index.astype(np.float64), prob=dist[a_index, b_index], method="exact",
        ties=int(tied.sum()) if with_shift else 0, tie_weight=1.0, tie_chance=k / (k + 1), span=span,
    )


def _shift(dist: np.ndarray, da: int, db: int) -> np.ndarray:
    out = np.zeros_like(dist)
    rows, cols = dist.shape
    src_r = slice(max(0, -da), rows - max(0, da))
    dst_r = slice(max(0, da), rows - max(0, -da))
    out[dst_r, db:] = dist[src_r, : cols - db]
    return out


def _monte_carlo(steps: np.ndarray, weights: np.ndarray, draws: int, seed: int,
                 span: tuple[float, float]) -> NullDistribution:
    """``draws`` independent relabellings (ties included), in chunks to bound memory."""
    n, k = steps.shape
    rng = np.random.default_rng(seed)
    a = np.empty(draws)
    b = np.empty(draws)
    chunk = max(1, 2_000_000 // max(n, 1))
    # scale B by the mean weight so both coordinates are in the statistic's units (A already is)
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        slot = rng.integers(0, k + 1, size=(size, n))  # 0 = the variant keeps its label
        moved = slot > 0
        picked = np.take_along_axis(np.broadcast_to(steps, (size, n, k)), np.maximum(slot - 1, 0)[..., None],
                                    axis=2)[..., 0]
        a[start : start + size] = (moved * picked) @ weights
        b[start : start + size] = moved @ weights
    return NullDistribution(a, b, np.full(draws, 1.0 / draws), "monte_carlo", draws=draws, seed=seed, span=span)
