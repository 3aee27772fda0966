"""The decision rule (SPEC §7): which variant, if any, is promoted, and why, in words.

A variant passes when (1) its target reward beats ``baseline`` by more than
``min_gain``, (2) it beats the random-index control, and (3) no guard drops
by more than its budget — each at one-sided level α, its p-value the max of
the three (intersection–union), Holm-adjusted across variants. A variant that
passes on point estimates only makes the run INCONCLUSIVE, never PROMOTE.
Pure: per-item score vectors in, a :class:`Decision` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats
from .rules import GateRule, TaskRule

BASELINE = "baseline"
#: Name of the synthetic reference arm: per-item mean over the control seeds.
CONTROL_MEAN = "random_index"
REWARD = "reward"

#: Scores of each arm on each task, one value per item, items in the same order for every arm.
Scores = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Comparison:
    """One arm against one reference on one task (or on the weighted target reward)."""

    arm: str
    reference: str
    task: str
    estimate: stats.Estimate
    alpha: float

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {"arm": self.arm, "reference": self.reference, "task": self.task, "delta": e.delta,
                "se": _finite(e.se), "lcb": _finite(e.lower(self.alpha)), "ucb": _finite(e.upper(self.alpha)),
                "p_value": e.p_above(0.0), "n": e.n, "discordant": e.discordant}


@dataclass(frozen=True)
class Criterion:
    """One of a variant's pass conditions, decided statistically and on the point estimate."""

    id: str
    task: str
    reference: str
    estimate: stats.Estimate
    threshold: float
    alpha: float
    strict: bool

    @property
    def lcb(self) -> float:
        return self.estimate.lower(self.alpha)

    @property
    def p_value(self) -> float:
        return self.estimate.p_above(self.threshold)

    @property
    def passed(self) -> bool:
        """The bound clears the threshold (and, with zero spread, the sign test agrees)."""
        bound = self.lcb > self.threshold if self.strict else self.lcb >= self.threshold
        return bound and (self.estimate.se > 0 or self.p_value < self.alpha)

    @property
    def passed_point(self) -> bool:
        delta = self.estimate.delta
        return delta > self.threshold if self.strict else delta >= self.threshold

    def text(self) -> str:
        """The criterion in words, in points (×100): what was measured and what it needed."""
        level = round(100 * (1 - self.alpha))
        if self.id.startswith("guard:"):
            return (f"guard {self.task} {pts(self.estimate.delta)} pts vs {self.reference} "
                    f"({level}% LCB {pts(self.lcb)}, budget ≥ {pts(self.threshold)})")
        return (f"target reward {pts(self.estimate.delta)} pts vs {self.reference} "
                f"({level}% LCB {pts(self.lcb)}, needs > {pts(self.threshold)})")

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {"id": self.id, "task": self.task, "reference": self.reference, "estimate": e.delta,
                "se": _finite(e.se), "lcb": _finite(self.lcb), "threshold": self.threshold,
                "p_value": self.p_value, "passed": self.passed, "passed_point": self.passed_point,
                "text": self.text()}


@dataclass
class Verdict:
    """Everything decided about one candidate variant."""

    arm: str
    criteria: list[Criterion]
    reward: float
    worst_guard_drop: float
    p_adjusted: float = 1.0
    alpha: float = 0.05

    @property
    def p_value(self) -> float:
        return max(c.p_value for c in self.criteria)

    @property
    def passed(self) -> bool:
        return self.p_adjusted < self.alpha and all(c.passed for c in self.criteria)

    @property
    def passed_point(self) -> bool:
        return all(c.passed_point for c in self.criteria)

    def failures(self) -> tuple[list[Criterion], list[Criterion]]:
        """Criteria failed on the point estimate, and those that hold on it but not with confidence."""
        on_point = [c for c in self.criteria if not c.passed_point]
        on_confidence = [c for c in self.criteria if c.passed_point and not c.passed]
        return on_point, on_confidence

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "passed_point": self.passed_point, "p_value": self.p_value,
                "p_adjusted": self.p_adjusted, "reward": self.reward, "worst_guard_drop": self.worst_guard_drop,
                "criteria": [c.to_json() for c in self.criteria]}


@dataclass
class Decision:
    """The outcome, the promoted arm, the reasons, and the evidence behind them."""

    outcome: str
    promoted: str | None
    reasons: list[str]
    verdicts: dict[str, Verdict]
    comparisons: list[Comparison]
    tasks: dict[str, dict[str, Any]]
    arm_scores: dict[str, dict[str, dict[str, float]]]
    rule: GateRule
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "reasons": self.reasons, "warnings": self.warnings,
            "gate": {"mode": self.rule.mode, "alpha": self.rule.alpha, "min_gain": self.rule.min_gain,
                     "holm": self.rule.holm, "control_reference": self.rule.control_reference},
            "tasks": self.tasks,
            "comparisons": [c.to_json() for c in self.comparisons],
            "variants": {name: v.to_json() for name, v in self.verdicts.items()},
        }


def pts(value: float | None, signed: bool = True) -> str:
    """A 0–1 metric difference as points (×100) with a real minus sign; ``n/a`` and ±∞ where unbounded."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "−∞" if value < 0 else "+∞"
    text = f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return text.replace("-", "−")


def _finite(value: float) -> float | None:
    """JSON has no infinity: an unbounded value is written as null."""
    return None if math.isinf(value) or math.isnan(value) else value


def oriented(scores: Scores, rules: Sequence[TaskRule]) -> dict[str, dict[str, np.ndarray]]:
    """Scores flipped so that larger is better on every task."""
    return {arm: {r.name: r.sign * np.asarray(by_task[r.name], dtype=np.float64) for r in rules}
            for arm, by_task in scores.items()}


def control_references(scores: Mapping[str, Mapping[str, np.ndarray]], controls: Sequence[str],
                       rule: GateRule) -> dict[str, dict[str, np.ndarray]]:
    """Reference arms for criterion 2: the per-item seed mean, or every seed (``each``)."""
    if rule.control_reference == "each":
        return {c: dict(scores[c]) for c in controls}
    tasks = scores[controls[0]].keys()
    return {CONTROL_MEAN: {t: np.mean([scores[c][t] for c in controls], axis=0) for t in tasks}}


def compare(scores: Mapping[str, Mapping[str, np.ndarray]], arm: str, reference: str,
            references: Mapping[str, Mapping[str, np.ndarray]], targets: Sequence[TaskRule],
            guards: Sequence[TaskRule], alpha: float) -> list[Comparison]:
    """Per-task paired comparisons of ``arm`` against ``reference``, plus the weighted target reward."""
    ref = references[reference]
    per_task = {r.name: stats.paired(scores[arm][r.name], ref[r.name]) for r in (*targets, *guards)}
    reward = stats.weighted([per_task[r.name] for r in targets], [r.weight for r in targets])
    return [Comparison(arm, reference, REWARD, reward, alpha),
            *(Comparison(arm, reference, name, e, alpha) for name, e in per_task.items())]


def verdict(arm: str, comparisons: Sequence[Comparison], controls: Sequence[str], guards: Sequence[TaskRule],
            rule: GateRule) -> Verdict:
    """The variant's criteria (SPEC §7), built from its comparisons."""
    found = {(c.reference, c.task): c.estimate for c in comparisons if c.arm == arm}
    criteria = [Criterion("beats_baseline", REWARD, BASELINE, found[(BASELINE, REWARD)], rule.min_gain,
                          rule.alpha, strict=True)]
    for control in controls:
        suffix = "" if control == CONTROL_MEAN else f":{control}"
        criteria.append(Criterion(f"beats_control{suffix}", REWARD, control, found[(control, REWARD)], 0.0,
                                  rule.alpha, strict=True))
    drops = [0.0]
    for g in guards:
        estimate = found[(BASELINE, g.name)]
        criteria.append(Criterion(f"guard:{g.name}", g.name, BASELINE, estimate, -float(g.max_drop), rule.alpha,
                                  strict=False))
        drops.append(max(0.0, -estimate.delta))
    return Verdict(arm, criteria, found[(BASELINE, REWARD)].delta, max(drops), alpha=rule.alpha)


def task_summaries(comparisons: Sequence[Comparison], rules: Sequence[TaskRule], variants: Sequence[str],
                   alpha: float) -> dict[str, dict[str, Any]]:
    """Per task: its role and budget, n, and the MDE planned (assumed discordance) and observed."""
    out = {}
    for r in rules:
        against_baseline = [c.estimate for c in comparisons
                            if c.task == r.name and c.reference == BASELINE and c.arm in variants]
        n = against_baseline[0].n if against_baseline else 0
        observed = stats.observed_mde(against_baseline, alpha)
        out[r.name] = {"role": r.role, "metric": r.metric, "higher_is_better": r.higher_is_better,
                       "weight": r.weight if r.role == "target" else None,
                       "max_drop": r.max_drop if r.role == "guard" else None, "n": n,
                       "mde_planned": _finite(stats.planned_mde(n, alpha)), "mde_observed": _finite(observed)}
    return out


def budget_warnings(rules: Sequence[TaskRule], n_items: Mapping[str, int], alpha: float) -> list[str]:
    """Guards whose budget is below the planned MDE cannot show non-inferiority for an unchanged score."""
    warnings = []
    for r in rules:
        if r.role != "guard":
            continue
        planned = stats.planned_mde(n_items[r.name], alpha)
        if r.max_drop is not None and r.max_drop < planned:
            warnings.append(
                f"guard {r.name}: budget {100 * r.max_drop:.1f} pts is below its minimum detectable effect "
                f"{100 * planned:.1f} pts at n={n_items[r.name]} (assuming {100 * stats.PLANNED_DISCORDANCE:.0f}% "
                "discordant items): a variant that leaves the guard unchanged will rarely pass; use more items "
                "or a larger budget")
    return warnings


def arm_scores(scores: Scores, rules: Sequence[TaskRule], alpha: float) -> dict[str, dict[str, dict[str, float]]]:
    """Each arm's mean per task with a two-sided (1 − 2α) interval, on the metric's own scale."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_task in scores.items():
        out[arm] = {}
        for r in rules:
            mean, se, low, high = stats.mean_interval(by_task[r.name], alpha)
            out[arm][r.name] = {"mean": mean, "se": _finite(se), "ci_low": _finite(low), "ci_high": _finite(high),
                                "n": int(np.asarray(by_task[r.name]).size)}
    return out


def decide(scores: Scores, targets: Sequence[TaskRule], guards: Sequence[TaskRule], rule: GateRule,
           variants: Sequence[str], controls: Sequence[str]) -> Decision:
    """Judge every variant against ``baseline`` and the controls; pick the winner or explain why none."""
    if not variants:
        raise ValueError("decide: no candidate variants")
    if not controls:
        raise ValueError("decide: at least one random-index control is required")
    rules = [*targets, *guards]
    board = oriented(scores, rules)
    references = {BASELINE: board[BASELINE], **control_references(board, controls, rule)}
    comparisons: list[Comparison] = []
    for arm in [*variants, *controls]:
        comparisons += compare(board, arm, BASELINE, references, targets, guards, rule.alpha)
    for arm in variants:
        for reference in references:
            if reference != BASELINE:
                comparisons += compare(board, arm, reference, references, targets, [], rule.alpha)
    verdicts = {arm: verdict(arm, comparisons, [r for r in references if r != BASELINE], guards, rule)
                for arm in variants}
    raw = [verdicts[a].p_value for a in variants]
    for arm, p in zip(variants, stats.holm(raw) if rule.holm else raw):
        verdicts[arm].p_adjusted = p
    outcome, winner, reasons = outcome_of(verdicts, rule)
    tasks = task_summaries(comparisons, rules, variants, rule.alpha)
    return Decision(outcome, winner, reasons, verdicts, comparisons, tasks, arm_scores(scores, rules, rule.alpha),
                    rule, budget_warnings(rules, {k: v["n"] for k, v in tasks.items()}, rule.alpha))


def _rank(v: Verdict) -> tuple[float, float, str]:
    """Highest reward first; ties go to the smaller guard drop, then the name (deterministic)."""
    return (-v.reward, v.worst_guard_drop, v.arm)


def outcome_of(verdicts: Mapping[str, Verdict], rule: GateRule) -> tuple[str, str | None, list[str]]:
    """PROMOTE / REJECT / INCONCLUSIVE, the promoted arm, and the reasons in words."""
    point = rule.mode == "point"
    passing = sorted((v for v in verdicts.values() if (v.passed_point if point else v.passed)), key=_rank)
    near = sorted((v for v in verdicts.values() if v.passed_point), key=_rank)
    details = [_verdict_reason(v, rule, point) for v in sorted(verdicts.values(), key=_rank)]
    if passing:
        win = passing[0]
        evidence = "on point estimates (mode: point)" if point else (
            f"with confidence (p = {win.p_adjusted:.3g}{' after Holm' if rule.holm and len(verdicts) > 1 else ''} "
            f"< α = {rule.alpha})")
        head = (f"PROMOTE {win.arm}: it beats baseline and the random control and stays within every guard budget "
                f"{evidence}; target reward {pts(win.reward)} pts, worst guard drop {100 * win.worst_guard_drop:.1f} pts")
        return "PROMOTE", win.arm, [head, *details]
    if near:
        head = (f"INCONCLUSIVE: {', '.join(v.arm for v in near)} pass on point estimates but not with "
                f"{round(100 * (1 - rule.alpha))}% confidence; more evaluation items are needed to decide")
        return "INCONCLUSIVE", None, [head, *details]
    return "REJECT", None, ["REJECT: no variant passes the gate, even on point estimates", *details]


def _verdict_reason(v: Verdict, rule: GateRule, point: bool) -> str:
    """Why a variant passed or failed: point-estimate failures first, then confidence failures."""
    on_point, on_confidence = v.failures()
    parts = []
    if on_point:
        parts.append("fails " + "; ".join(c.text() for c in on_point))
    if on_confidence and not point:
        level = round(100 * (1 - rule.alpha))
        parts.append(f"not shown with {level}% confidence: " + "; ".join(c.text() for c in on_confidence))
    if parts:
        return f"{v.arm}: " + ". ".join(parts)
    if not point and not v.passed:
        return (f"{v.arm}: every criterion holds at α = {rule.alpha} alone, but p = {v.p_adjusted:.3g} after Holm "
                "across the variants does not")
    return f"{v.arm}: passes: {'; '.join(c.text() for c in v.criteria)}"
