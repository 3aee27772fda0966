"""Which exact test each comparison uses, and the evidence it gives: p-values and bounds that agree.

* Superiority (``Δ > 0``: beats baseline, beats a control): the paired permutation test
  (:mod:`.permutation`) — sign-flip against one reference, exact McNemar for 0/1 scores, label
  permutation against the seed mean of the random controls.
* A margin (``Δ > δ0`` with δ0 ≠ 0: a guard's ``−max_drop``, a positive ``min_gain``) on one task with
  0/1 scores against one reference: the exact unconditional test with Tango's ordering (:mod:`.margin`).
  Other scores (fractional metrics, several weighted targets) use the permutation test shifted by δ0,
  exact under a location shift.

Every bound is the inversion of the test that gives the criterion's p-value, so a bound beyond its
threshold and a p-value under its level are the same statement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .margin import MarginTest
from .permutation import PairedData, PermutationTest
from .rules import TaskRule


class ExactTest(Protocol):
    name: str

    @property
    def method(self) -> str: ...

    def p_value(self, delta0: float) -> float: ...

    def p_value_below(self, delta0: float) -> float: ...

    def lower_bound(self, level: float) -> float: ...

    def upper_bound(self, level: float) -> float: ...


@dataclass
class Evidence:
    """One paired comparison (an arm against its reference arms) and the test that judges it."""

    data: PairedData
    test: ExactTest
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
        return self.test.lower_bound(level)

    def upper(self, level: float) -> float:
        return self.test.upper_bound(level)

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
    values = np.unique(np.concatenate([data.variant, data.references[:, 0]]))
    return bool(set(values.tolist()) <= {0.0, 1.0} or set(values.tolist()) <= {-1.0, 0.0})


def judge(data: PairedData, threshold: float = 0.0) -> Evidence:
    """The evidence for ``Δ > threshold``: permutation at 0, the exact margin test for 0/1 margins."""
    if threshold != 0.0 and is_binary(data):
        d = np.round(data.variant - data.references[:, 0], 12)
        return Evidence(data, MarginTest(int((d > 0).sum()), int((d < 0).sum()), data.n))
    return Evidence(data, PermutationTest(data))


def paired_data(board: Mapping[str, Mapping[str, np.ndarray]], arm: str, references: Sequence[str],
                rules: Sequence[TaskRule]) -> PairedData:
    """``arm`` against ``references`` over the items of ``rules`` (weights: task weight / its n, summing to 1)."""
    total = float(sum(r.weight for r in rules))
    variant, refs, weights, strata = [], [], [], []
    for index, rule in enumerate(rules):
        scores = np.asarray(board[arm][rule.name], dtype=np.float64)
        n = scores.size
        variant.append(scores)
        refs.append(np.column_stack([np.asarray(board[r][rule.name], dtype=np.float64)[:n] for r in references]))
        weights.append(np.full(n, rule.weight / total / max(n, 1)))
        strata.append(np.full(n, index))
    return PairedData.of(np.concatenate(variant), np.concatenate(refs), np.concatenate(weights), np.concatenate(strata))
