"""A variant's pass conditions at one look, and the comparisons behind them (SPEC §7). Pure.

A variant passes when (1) its target reward beats ``baseline`` by more than ``min_gain``, (2) it beats the
random-index control, and (3) no guard drops by more than its budget. Each criterion is a one-sided
test (:mod:`.evidence`): exact at a fixed n for 0/1 scores against one reference, an anytime-valid betting
test otherwise (``Criterion.anytime``), judged at ``level``; the variant's p-value is the largest of its
criteria's (intersection–union), which is what the multiplicity rule across variants sees. Scores must lie
in each task's declared range (:func:`check_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..document import ComparisonRecord, CriterionRecord, VerdictRecord
from ..schema import BASE, BASELINE, CONTROL_MEAN, REWARD, Status, rank_key
from .evidence import Evidence, judge, paired_data
from .rules import GateRule, TaskRule

#: Differences closer than this to a threshold are at the threshold: a seed mean of K controls is k/K, and
#: summing such weighted differences leaves ~1e-17 of rounding, which must not count as "better" (a real
#: difference is at least one item's weight, ≥ 1e-6 for any task of under a million items).
POINT_TOLERANCE = 1e-9

#: Scores of each arm on each task, one value per item, items in the same order for every arm.
Scores = Mapping[str, Mapping[str, np.ndarray]]


def pts(value: float | None, signed: bool = True) -> str:
    """A 0–1 metric difference as points (×100) with a real minus sign; ``n/a`` and ±∞ where unbounded."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "−∞" if value < 0 else "+∞"
    shown = 0.0 if abs(100 * value) < 0.05 else 100 * value  # no "−0.0"
    text = f"{shown:+.1f}" if signed else f"{shown:.1f}"
    return text.replace("-", "−")


def confidence(level: float) -> str:
    """``1 − level`` as a percentage with the digits that tell it from 100% (an early look's level is ~1e-5)."""
    digits = max(0, -math.floor(math.log10(100 * level))) + 1 if 0 < level < 1 else 0
    return f"{100 * (1 - level):.{digits}f}".rstrip("0").rstrip(".") + "%"


def finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded value is written as null."""
    return None if value is None or math.isinf(value) or math.isnan(value) else value


def check_scores(scores: Scores, rules: Sequence[TaskRule]) -> None:
    """``ValueError`` naming task, arm and item for a score outside its task's declared range (or NaN)."""
    for arm, by_task in scores.items():
        for rule in rules:
            if rule.name in by_task:
                rule.check(arm, by_task[rule.name])


def oriented(scores: Scores, rules: Sequence[TaskRule]) -> dict[str, dict[str, np.ndarray]]:
    """Scores flipped so that larger is better on every task."""
    return {arm: {r.name: r.sign * np.asarray(by_task[r.name], dtype=np.float64) for r in rules if r.name in by_task}
            for arm, by_task in scores.items()}


def control_references(controls: Sequence[str], rule: GateRule) -> dict[str, tuple[str, ...]]:
    """Reference sets for criterion 2: all seeds together (``mean``), or every seed alone (``each``)."""
    if rule.control_reference == "each":
        return {c: (c,) for c in controls}
    return {CONTROL_MEAN: tuple(controls)}


@dataclass
class Comparison:
    """One arm against one reference (an arm or the control set) on one task or on the weighted reward."""

    arm: str
    reference: str
    task: str
    evidence: Evidence
    alpha: float

    def record(self) -> ComparisonRecord:
        e = self.evidence
        return ComparisonRecord(arm=self.arm, reference=self.reference, task=self.task, delta=e.delta,
                                se=finite(e.se), lcb=finite(e.lower(self.alpha)), ucb=finite(e.upper(self.alpha)),
                                p_value=e.p_value(0.0), n=e.n, discordant=e.discordant, test=e.test.name,
                                method=e.test.method)


@dataclass
class Criterion:
    """One of a variant's pass conditions, tested at ``level`` (the look's nominal level for α)."""

    id: str
    task: str
    reference: str
    evidence: Evidence
    threshold: float
    level: float
    strict: bool
    #: judged on the point estimate alone (``gate.mode: point``): its words then claim no confidence
    point: bool = False

    @property
    def estimate(self) -> float:
        return self.evidence.delta

    @property
    def anytime(self) -> bool:
        """The p-value is anytime-valid (compare it with the α share at any look) rather than exact at this n."""
        return self.evidence.anytime

    @property
    def p_value(self) -> float:
        return self.evidence.p_value(self.threshold)

    @property
    def passed(self) -> bool:
        """The test rejects ``Δ ≤ threshold`` at ``level`` (equivalently: ``lcb > threshold``)."""
        return self.p_value <= self.level

    @property
    def passed_point(self) -> bool:
        margin = self.estimate - self.threshold
        return margin > POINT_TOLERANCE if self.strict else margin >= -POINT_TOLERANCE

    @property
    def lcb(self) -> float:
        return self.evidence.lower(self.level)

    @property
    def is_guard(self) -> bool:
        return self.id.startswith("guard:")

    def text(self) -> str:
        """The criterion in words, in points (×100): what was measured and what it needed — with its
        confidence bound, or in point mode the point comparison alone (that mode claims no confidence)."""
        shown = "point estimate" if self.point else f"{confidence(self.level)} LCB {pts(self.lcb)}"
        if self.is_guard:
            return (f"guard {self.task} {pts(self.estimate)} pts vs {self.reference} "
                    f"({shown}, budget ≥ {pts(self.threshold)})")
        return f"target reward {pts(self.estimate)} pts vs {self.reference} ({shown}, needs > {pts(self.threshold)})"

    def record(self) -> CriterionRecord:
        e = self.evidence
        return CriterionRecord(id=self.id, task=self.task, reference=self.reference, estimate=e.delta,
                               se=finite(e.se), lcb=finite(self.lcb), threshold=self.threshold, level=self.level,
                               p_value=self.p_value, passed=self.passed, passed_point=self.passed_point,
                               n=e.n, discordant=e.discordant, test=e.test.name, method=e.test.method,
                               anytime=self.anytime, text=self.text())


@dataclass
class Verdict:
    """Everything decided about one candidate variant, at the look where it was decided.

    ``status``: ``passed`` (shown with confidence), ``futile`` (conditional power too low to pass),
    ``collapsed`` (a guard certainly beyond its budget), ``outranked`` (a passing variant has a higher
    reward), ``final`` (evaluated to every task's limit without passing).
    """

    arm: str
    criteria: list[Criterion]
    look: int
    fraction: float
    n: dict[str, int]
    status: Status = Status.EVALUATING
    level: float = math.nan
    boundary: float = math.nan
    p_adjusted: float = 1.0
    note: str = ""

    @property
    def reward(self) -> float:
        return self.criteria[0].estimate

    @property
    def worst_guard_drop(self) -> float:
        return max([0.0, *(max(0.0, -c.estimate) for c in self.criteria if c.is_guard)])

    @property
    def p_value(self) -> float:
        return max(c.p_value for c in self.criteria)

    @property
    def passed(self) -> bool:
        return self.status == Status.PASSED

    @property
    def passed_point(self) -> bool:
        return all(c.passed_point for c in self.criteria)

    def failures(self) -> tuple[list[Criterion], list[Criterion]]:
        """Criteria failed on the point estimate, and those that hold on it but not with confidence."""
        on_point = [c for c in self.criteria if not c.passed_point]
        on_confidence = [c for c in self.criteria if c.passed_point and not c.passed]
        return on_point, on_confidence

    def rank(self) -> tuple[float, float, str]:
        """The gate's order of variants (:func:`..schema.rank_key`)."""
        return rank_key(self.reward, self.worst_guard_drop, self.arm)

    def record(self) -> VerdictRecord:
        return VerdictRecord(passed=self.passed, passed_point=self.passed_point, status=self.status,
                             look=self.look + 1, fraction=self.fraction, n=self.n, p_value=self.p_value,
                             p_adjusted=self.p_adjusted, level=finite(self.level), boundary=finite(self.boundary),
                             reward=self.reward, worst_guard_drop=self.worst_guard_drop, note=self.note,
                             criteria=[c.record() for c in self.criteria])


@dataclass(frozen=True)
class Board:
    """Oriented scores of the arms evaluated so far (each arm on the first n items of every task)."""

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def n(self, arm: str) -> dict[str, int]:
        return {task: int(values.size) for task, values in self.scores[arm].items()}


def reward_evidence(board: Board, arm: str, references: Sequence[str], targets: Sequence[TaskRule],
                    threshold: float = 0.0) -> Evidence:
    return judge(paired_data(board.scores, arm, references, targets), threshold)


def task_evidence(board: Board, arm: str, references: Sequence[str], rule: TaskRule,
                  threshold: float = 0.0) -> Evidence:
    return judge(paired_data(board.scores, arm, references, [rule]), threshold)


def criteria_for(board: Board, arm: str, targets: Sequence[TaskRule], guards: Sequence[TaskRule],
                 controls: Sequence[str], rule: GateRule, level: float) -> list[Criterion]:
    """The variant's criteria on the items it has been scored on, each tested at ``level``."""
    point = rule.mode == "point"
    out = [Criterion("beats_baseline", REWARD, BASELINE,
                     reward_evidence(board, arm, [BASELINE], targets, rule.min_gain), rule.min_gain, level, True,
                     point)]
    for name, members in control_references(controls, rule).items():
        suffix = "" if name == CONTROL_MEAN else f":{name}"
        out.append(Criterion(f"beats_control{suffix}", REWARD, name, reward_evidence(board, arm, members, targets),
                             0.0, level, True, point))
    for g in guards:
        budget = -float(g.max_drop)
        out.append(Criterion(f"guard:{g.name}", g.name, BASELINE, task_evidence(board, arm, [BASELINE], g, budget),
                             budget, level, False, point))
    return out


def comparisons_for(board: Board, arms: Sequence[str], variants: Sequence[str], controls: Sequence[str],
                    targets: Sequence[TaskRule], guards: Sequence[TaskRule], rule: GateRule) -> list[Comparison]:
    """Every arm against baseline (reward and each task), variants against the controls, baseline against base."""
    out: list[Comparison] = []
    for arm in arms:
        if arm in (BASE, BASELINE):
            continue
        out.append(Comparison(arm, BASELINE, REWARD, reward_evidence(board, arm, [BASELINE], targets), rule.alpha))
        out += [Comparison(arm, BASELINE, r.name, task_evidence(board, arm, [BASELINE], r), rule.alpha)
                for r in (*targets, *guards)]
    for arm in variants:
        for name, members in control_references(controls, rule).items():
            out.append(Comparison(arm, name, REWARD, reward_evidence(board, arm, members, targets), rule.alpha))
    if BASE in board.scores:
        out += [Comparison(BASELINE, BASE, r.name, task_evidence(board, BASELINE, [BASE], r), rule.alpha)
                for r in (*targets, *guards)]
    return out
