"""Which test each comparison uses, and the evidence it gives: p-values and bounds that agree (SPEC §7).

* 0/1 scores on one task against ONE reference arm (``baseline``, one control seed): the exact tests of
  :mod:`.margin` — McNemar for ``Δ > 0``, the exact unconditional test with Tango's ordering for a margin
  ``Δ > δ0`` (a guard's ``−max_drop``, a positive ``min_gain``). Exact at the look's fixed n
  (``anytime = False``: the gate spends α over its looks for them).
* Everything else — the seed mean of K ≥ 2 random controls, fractional and continuous metrics, several
  weighted targets — the betting test of :mod:`.betting` on the per-item difference ``v − mean c``,
  bounded by the tasks' declared ranges. It needs no symmetry and no exchangeability of the variant
  with the controls (a variant that changes more items than its controls is not one more control, and
  a label permutation or a shifted sign-flip then over-rejects), and it is anytime-valid
  (``anytime = True``: its p-value is compared with the variant's α share at every look).

Every bound is the inversion of the test that gives the criterion's p-value (one bisection,
:func:`invert`), so a bound beyond its threshold and a p-value under its level are the same statement
(at δ0 = 0 of a 0/1 comparison, where McNemar takes over from the margin test: ``lcb ≥ 0 ⟺ p(0) ≤ level``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from .betting import BettingTest, Stratum
from .margin import MarginTest, McNemarTest
from .rules import TaskRule

#: A bound is located to this share of its span (±(hi − lo)): 1e-7 of a 0–1 metric is 1e-5 points.
RESOLUTION = 1e-7
_TOL = 1e-9


class Test(Protocol):
    """What the gate needs of a test: one-sided p-values at any threshold, the range its bounds live in."""

    name: str
    method: str
    anytime: bool

    @property
    def span(self) -> tuple[float, float]: ...

    def p_value(self, delta0: float) -> float: ...

    def p_value_below(self, delta0: float) -> float: ...


def invert(p_value: Callable[[float], float], span: tuple[float, float], level: float,
           estimate: float | None = None) -> float:
    """``sup{δ : p(δ) ≤ level}`` for a p-value non-decreasing in δ: the one-sided (1 − level) lower bound.

    ``-inf`` when not even the bottom of ``span`` is rejected. The bracket is first split at 0, so the
    bound's side of 0 is decided by ``p(0)`` itself, then at the estimate (usually not rejected: a
    short bracket), then halved down to :data:`RESOLUTION` of the span.
    """
    low, high = span
    if p_value(low) > level:
        return -math.inf
    if p_value(high) <= level:
        return high
    tolerance = RESOLUTION * (span[1] - span[0])
    for probe in (0.0, estimate):
        if probe is not None and low < probe < high:
            low, high = (probe, high) if p_value(probe) <= level else (low, probe)
    while high - low > tolerance:
        mid = 0.5 * (low + high)
        if p_value(mid) <= level:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class PairedData:
    """Oriented per-item scores of one arm and its reference arm(s), with per-item weights and strata.

    ``variant`` has shape (n,), ``references`` (n, K). ``weights`` sum to one over the items (a task's
    weight divided by its n), so ``delta`` is the weighted mean difference the gate reports; ``strata``
    names each item's task, and ``widths[s]`` is task s's declared range ``hi − lo`` (the differences
    of that task lie in ``[−width, width]``).
    """

    variant: np.ndarray
    references: np.ndarray
    weights: np.ndarray
    strata: np.ndarray
    widths: tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, variant, references, weights=None, strata=None, widths=None) -> PairedData:
        v = np.asarray(variant, dtype=np.float64)
        c = np.asarray(references, dtype=np.float64)
        c = c.reshape(v.size, -1) if c.ndim != 2 else c
        if c.shape[0] != v.size or v.ndim != 1:
            raise ValueError(f"paired scores must align: variant {v.shape}, references {c.shape}")
        w = np.full(v.size, 1.0 / max(v.size, 1)) if weights is None else np.asarray(weights, dtype=np.float64)
        s = np.zeros(v.size, dtype=np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
        count = int(s.max()) + 1 if s.size else 1
        return cls(v, c, w, s, tuple(float(x) for x in widths) if widths is not None else (1.0,) * count)

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
        """Descriptive standard error of ``delta`` (per-task spread, pooled by weight); not used by the tests."""
        variance = 0.0
        for stratum in np.unique(self.strata):
            members = self.strata == stratum
            d, w = self.differences[members], self.weights[members]
            if d.size < 2:
                return math.inf
            variance += float(np.sum(w**2 * (d - d.mean()) ** 2)) * d.size / (d.size - 1)
        return math.sqrt(variance) if self.n else math.inf

    def by_stratum(self) -> tuple[Stratum, ...]:
        """Each task's differences in sampling order, its share of the reward and its half-range."""
        return tuple(Stratum(self.differences[self.strata == s], float(self.weights[self.strata == s].sum()),
                             self.widths[s]) for s in np.unique(self.strata))


@dataclass
class Evidence:
    """One paired comparison (an arm against its reference arms) and the test that judges it."""

    data: PairedData
    test: Test
    _p: dict[float, float] = field(default_factory=dict, repr=False)

    @property
    def delta(self) -> float:
        return self.data.delta

    @property
    def se(self) -> float:
        return self.data.se

    @property
    def n(self) -> int:
        return self.data.n

    @property
    def discordant(self) -> int:
        return self.data.discordant

    @property
    def anytime(self) -> bool:
        """Whether the p-value is valid at every look as it stands (betting) or only at a fixed n (exact)."""
        return self.test.anytime

    def p_value(self, threshold: float = 0.0) -> float:
        """One-sided p-value of ``H0: Δ ≤ threshold``."""
        if threshold not in self._p:
            self._p[threshold] = self.test.p_value(threshold)
        return self._p[threshold]

    def p_value_below(self, threshold: float) -> float:
        """One-sided p-value of ``H0: Δ ≥ threshold`` (e.g. a guard certainly beyond its budget)."""
        return self.test.p_value_below(threshold)

    def lower(self, level: float) -> float:
        """One-sided (1 − level) lower bound: ``lower(level) > t`` ⟺ ``p_value(t) ≤ level``."""
        return invert(self.p_value, self.test.span, level, self.delta)

    def upper(self, level: float) -> float:
        low, high = self.test.span
        return -invert(lambda t: self.test.p_value_below(-t), (-high, -low), level, -self.delta)

    def z(self, threshold: float) -> float:
        """Distance of the estimate past ``threshold`` in standard errors (for conditional power)."""
        gap = self.delta - threshold
        if self.se == 0.0 or math.isinf(self.se):
            return math.copysign(math.inf, gap) if gap else 0.0
        return gap / self.se


def is_binary(data: PairedData) -> bool:
    """0/1 scores (after orientation: {0, 1} or {−1, 0}) against a single reference on one task."""
    if data.k != 1 or np.unique(data.strata).size > 1:
        return False
    values = set(np.unique(np.concatenate([data.variant, data.references[:, 0]])).tolist())
    return values <= {0.0, 1.0} or values <= {-1.0, 0.0}


def judge(data: PairedData, threshold: float = 0.0) -> Evidence:
    """The evidence for ``Δ > threshold``: exact for 0/1 against one reference, betting otherwise."""
    if is_binary(data):
        d = np.round(data.variant - data.references[:, 0], 12)
        test = McNemarTest if threshold == 0.0 else MarginTest
        return Evidence(data, test(int((d > 0).sum()), int((d < 0).sum()), data.n))
    return Evidence(data, BettingTest(data.by_stratum()))


def paired_data(board: Mapping[str, Mapping[str, np.ndarray]], arm: str, references: Sequence[str],
                rules: Sequence[TaskRule]) -> PairedData:
    """``arm`` against ``references`` over the items of ``rules`` (weights: task weight / its n, summing to 1).

    Scores are oriented (larger is better); each must lie in its task's declared range (``ValueError``).
    """
    total = float(sum(r.weight for r in rules))
    variant, refs, weights, strata = [], [], [], []
    for index, rule in enumerate(rules):
        scores = np.asarray(board[arm][rule.name], dtype=np.float64)
        n = scores.size
        rule.check(arm, rule.sign * scores)
        columns = []
        for r in references:
            values = np.asarray(board[r][rule.name], dtype=np.float64)[:n]
            rule.check(r, rule.sign * values)
            columns.append(values)
        variant.append(scores)
        refs.append(np.column_stack(columns))
        weights.append(np.full(n, rule.weight / total / max(n, 1)))
        strata.append(np.full(n, index))
    return PairedData.of(np.concatenate(variant), np.concatenate(refs), np.concatenate(weights), np.concatenate(strata),
                         [r.width for r in rules])
