"""The decision rule (SPEC §7): which variant, if any, is promoted, and why, in words.

Evaluation happens in looks (:class:`Design`): at each look the arms still needed are scored on the
first n items of every task (items come in a seeded random order, so every prefix is a random sample),
each open variant's criteria are tested exactly (:mod:`.criteria`) and judged against the look's
nominal level (:mod:`.boundaries`: O'Brien–Fleming alpha spending; one look at α in fixed mode).
Holm across variants runs as a graphical procedure: a variant that passes hands its share of α to
the others, which are then tested again at the same look. Between looks an open variant stops when a
guard has certainly broken its budget (``collapsed``), when its conditional power under the current
trend is below ``gate.futility`` (``futile``), or when a variant with a higher reward has already
passed (``outranked``); stopping is non-binding, so it never raises the false-PROMOTE rate. The
baseline, the base model and the controls are evaluated as far as an open variant needs them.

Outcome: **PROMOTE** the passing variant with the highest reward (ties: smaller guard drop, then
name); **INCONCLUSIVE** when none passes but one passes on point estimates at its last look (with the
items per task that would decide it); **REJECT** otherwise. ``mode: point`` judges point estimates
only, in one look. Pure: a fetch callback supplies the scores, a :class:`Decision` comes out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schema import BASE, BASELINE, Outcome, Status, rank_key
from . import boundaries, stats
from .criteria import (
    Board,
    Comparison,
    Scores,
    Verdict,
    comparisons_for,
    criteria_for,
    finite,
    oriented,
    pts,
)
from .rules import GateRule, TaskRule

#: Discordant items a criterion needs before its trend can stop an arm for futility.
FUTILITY_EVIDENCE = 3
#: An INCONCLUSIVE names the items that would decide only up to this multiple of what was scored: beyond
#: it the observed effect is too small for any practical run, and the reason says so without a number.
MAX_ADVISED_FACTOR = 100
#: The items each arm must be scored on at a look: ``{arm: {task: n}}`` → the scores of those items.
Fetch = Callable[[Mapping[str, Mapping[str, int]]], Scores]

@dataclass(frozen=True)
class Design:
    """What is decided and how much may be evaluated: rules, arms, and every task's item limit."""

    rule: GateRule
    targets: tuple[TaskRule, ...]
    guards: tuple[TaskRule, ...]
    limits: Mapping[str, int]
    variants: tuple[str, ...]
    controls: tuple[str, ...]
    with_base: bool = True
    #: Items each task has in all (caps the INCONCLUSIVE advice); defaults to the limits.
    available: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("decide: no candidate variants")
        if not self.controls:
            raise ValueError("decide: at least one random-index control is required")

    @property
    def rules(self) -> tuple[TaskRule, ...]:
        return (*self.targets, *self.guards)

    @property
    def fractions(self) -> tuple[float, ...]:
        return self.rule.fractions

    def sizes(self, look: int) -> dict[str, int]:
        return {task: boundaries.look_sizes(limit, self.fractions)[look] for task, limit in self.limits.items()}

    def nominal(self, look: int, alpha: float) -> float:
        return boundaries.nominal_levels(alpha, self.fractions)[look]

    def to_json(self) -> dict[str, Any]:
        rule = self.rule
        levels = boundaries.nominal_levels(rule.alpha, self.fractions)
        return {"sequential": len(self.fractions) > 1, "looks": list(self.fractions),
                "spending": "Lan-DeMets O'Brien-Fleming" if len(self.fractions) > 1 else None,
                "nominal_levels": list(levels), "futility": rule.futility if len(self.fractions) > 1 else None,
                "items": {task: list(boundaries.look_sizes(limit, self.fractions)) for task, limit in self.limits.items()}}


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
    design: Design
    looks: list[dict[str, Any]]
    evaluated: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    items_needed: dict[str, int] | None = None

    @property
    def items(self) -> int:
        """Arm × item evaluations this decision used."""
        return sum(sum(by_task.values()) for by_task in self.evaluated.values())

    def to_json(self) -> dict[str, Any]:
        r = self.rule
        return {
            "outcome": self.outcome, "reasons": self.reasons, "warnings": self.warnings,
            "gate": {"mode": r.mode, "alpha": r.alpha, "min_gain": r.min_gain, "holm": r.holm,
                     "control_reference": r.control_reference, "sequential": r.sequential, "looks": list(r.looks),
                     "futility": r.futility},
            "design": self.design.to_json(),
            "tasks": self.tasks,
            "comparisons": [c.to_json() for c in self.comparisons],
            "variants": {name: v.to_json() for name, v in self.verdicts.items()},
            "looks": self.looks,
            "evaluated": self.evaluated,
            "items_needed": self.items_needed,
        }


# --- the looks -------------------------------------------------------------------------------------------


class _Gate:
    """The state of one gated run across its looks."""

    def __init__(self, design: Design, fetch: Fetch, record_bounds: bool) -> None:
        self.design, self.fetch, self.record_bounds = design, fetch, record_bounds
        self.rule = design.rule
        self.board = Board()
        self.open = list(design.variants)
        self.verdicts: dict[str, Verdict] = {}
        self.passed: list[str] = []
        self.looks: list[dict[str, Any]] = []
        self.evaluated: dict[str, dict[str, int]] = {}

    @property
    def last(self) -> int:
        return len(self.design.fractions) - 1

    def level(self) -> float:
        """Each open hypothesis's share of α (Holm: passed variants hand theirs on)."""
        remaining = len(self.design.variants) - len(self.passed)
        if not self.rule.holm or remaining <= 1:
            return self.rule.alpha
        return self.rule.alpha / remaining

    def run(self) -> None:
        for look in range(len(self.design.fractions)):
            self.score(look)
            self.judge(look)
            self.stop_early(look)
            self.record(look)
            if not self.open:
                break

    def score(self, look: int) -> None:
        sizes = self.design.sizes(look)
        arms = [BASELINE, *((BASE,) if self.design.with_base else ()), *self.design.controls, *self.open]
        fetched = oriented(self.fetch({arm: sizes for arm in arms}), self.design.rules)
        for arm in arms:
            self.board.scores[arm] = fetched[arm]
            self.evaluated[arm] = dict(sizes)

    def judge(self, look: int) -> None:
        criterion_level = self.design.nominal(look, self.rule.alpha)
        for arm in self.open:
            criteria = criteria_for(self.board, arm, self.design.targets, self.design.guards, self.design.controls,
                                    self.rule, criterion_level)
            self.verdicts[arm] = Verdict(arm, criteria, look, self.design.fractions[look], self.board.n(arm))
        point = self.rule.mode == "point"
        while self.open:
            level = self.level()
            boundary = self.design.nominal(look, level)
            newly = [a for a in self.open if (self.verdicts[a].passed_point if point
                                              else self.verdicts[a].p_value <= boundary)]
            if not newly:
                break
            for arm in newly:
                verdict = self.verdicts[arm]
                verdict.status, verdict.level, verdict.boundary = Status.PASSED, level, boundary
                verdict.note = f"passed at look {look + 1}"
                self.passed.append(arm)
                self.open.remove(arm)
            if point:
                break

    def stop_early(self, look: int) -> None:
        """Settle open variants: stopped early (collapse, futility, outranked), or final at the last look."""
        level = self.level()
        final_level = self.design.nominal(self.last, level)
        best = max((self.verdicts[a].reward for a in self.passed), default=None)
        for arm in list(self.open):
            verdict = self.verdicts[arm]
            verdict.level, verdict.boundary = level, self.design.nominal(look, level)
            status, note = self.early_stop(verdict, look, final_level, best)
            if look == self.last and status is None:
                status, note = Status.FINAL, "evaluated to every task's limit"
            if status is not None:
                verdict.status, verdict.note = status, note
                self.open.remove(arm)

    def early_stop(self, verdict: Verdict, look: int, final_level: float, best: float | None
                   ) -> tuple[Status | None, str]:
        if look == self.last or self.rule.mode == "point":
            return None, ""
        fraction = self.design.fractions[look]
        collapse_level = self.design.nominal(look, self.rule.alpha)
        for c in verdict.criteria:
            if c.is_guard and c.evidence.p_value_below(c.threshold) <= collapse_level:
                return Status.COLLAPSED, (f"stopped at look {look + 1}: guard {c.task} is certainly beyond its budget "
                                     f"({pts(c.estimate)} pts, budget {pts(c.threshold)})")
        for c in verdict.criteria:
            if c.evidence.discordant < FUTILITY_EVIDENCE:
                continue  # too few items differ to judge a trend: no evidence is not evidence of futility
            power = boundaries.conditional_power(c.evidence.z(c.threshold), fraction, final_level)
            if power < self.rule.futility:
                return Status.FUTILE, (f"stopped at look {look + 1} for futility: {c.id} has conditional power "
                                  f"{100 * power:.0f}% < {100 * self.rule.futility:.0f}%")
        if best is not None and verdict.reward <= best:
            return Status.OUTRANKED, f"stopped at look {look + 1}: a passing variant has a higher reward"
        return None, ""

    def record(self, look: int) -> None:
        """What this look saw and decided (decision.json ``looks``)."""
        variants = {}
        for arm, verdict in self.verdicts.items():
            if verdict.look != look:
                continue
            entry: dict[str, Any] = {"status": verdict.status, "p_value": verdict.p_value,
                                     "boundary": finite(verdict.boundary), "reward": verdict.reward,
                                     "criteria": {c.id: {"estimate": c.estimate, "p_value": c.p_value,
                                                         "threshold": c.threshold} for c in verdict.criteria}}
            if self.record_bounds:
                for c in verdict.criteria:
                    entry["criteria"][c.id]["lcb"] = finite(c.lcb)
            variants[arm] = entry
        self.looks.append({"look": look + 1, "fraction": self.design.fractions[look], "n": self.design.sizes(look),
                           "nominal_level": self.design.nominal(look, self.rule.alpha),
                           "arms": sorted(a for a, n in self.evaluated.items() if n == self.design.sizes(look)),
                           "variants": variants})


def run_gate(design: Design, fetch: Fetch, record_bounds: bool = True, summaries: bool = True) -> Decision:
    """Evaluate look by look through ``fetch`` and decide (see the module docstring).

    ``record_bounds`` adds every criterion's confidence bound to each look's record; ``summaries``
    builds the comparisons, task summaries and arm scores of the report. Simulations skip both.
    """
    gate = _Gate(design, fetch, record_bounds)
    gate.run()
    rule = design.rule
    if rule.holm and rule.mode == "statistical":
        names = list(design.variants)
        for arm, p in zip(names, stats.holm([gate.verdicts[a].p_value for a in names])):
            gate.verdicts[arm].p_adjusted = p
    else:
        for verdict in gate.verdicts.values():
            verdict.p_adjusted = verdict.p_value
    verdicts = {arm: gate.verdicts[arm] for arm in design.variants}
    outcome, winner = outcome_of(verdicts)
    warnings = budget_warnings(design.rules, design.limits, rule.alpha)
    if not summaries:
        return Decision(outcome, winner, [], verdicts, [], {}, {}, rule, design, gate.looks, gate.evaluated, warnings)
    reasons = reasons_for(outcome, winner, verdicts, rule)
    needed = items_needed(verdicts, design) if outcome == Outcome.INCONCLUSIVE else None
    if needed:
        reasons[0] += "; " + advice(needed, design)
    elif outcome == Outcome.INCONCLUSIVE:
        reasons[0] += (f"; the observed effects are too small for more items to settle (over {MAX_ADVISED_FACTOR}× "
                       "what was scored would be needed)")
    comparisons = comparisons_for(gate.board, list(gate.board.scores), design.variants, design.controls,
                                  design.targets, design.guards, rule)
    return Decision(outcome, winner, reasons, verdicts, comparisons, task_summaries(comparisons, design, gate.evaluated),
                    arm_scores(gate.board.scores, design.rules, rule.alpha, design.rules), rule, design, gate.looks,
                    gate.evaluated, warnings, needed)


def decide(scores: Scores, targets: Sequence[TaskRule], guards: Sequence[TaskRule], rule: GateRule,
           variants: Sequence[str], controls: Sequence[str]) -> Decision:
    """Judge every variant on fully known scores (items in sample order): looks take prefixes of them."""
    rules = [*targets, *guards]
    limits = {r.name: int(np.asarray(scores[BASELINE][r.name]).size) for r in rules}

    def fetch(request: Mapping[str, Mapping[str, int]]) -> Scores:
        return {arm: {t: np.asarray(scores[arm][t])[:n] for t, n in sizes.items()} for arm, sizes in request.items()}

    design = Design(rule, tuple(targets), tuple(guards), limits, tuple(variants), tuple(controls),
                    with_base=BASE in scores)
    return run_gate(design, fetch)


# --- outcome and words ---------------------------------------------------------------------------------


def _rank(v: Verdict) -> tuple[float, float, str]:
    return rank_key(v.reward, v.worst_guard_drop, v.arm)


def outcome_of(verdicts: Mapping[str, Verdict]) -> tuple[str, str | None]:
    """PROMOTE / REJECT / INCONCLUSIVE and the promoted arm."""
    passing = sorted((v for v in verdicts.values() if v.passed), key=_rank)
    if passing:
        return Outcome.PROMOTE, passing[0].arm
    if any(not v.passed and v.passed_point and v.status == Status.FINAL for v in verdicts.values()):
        return Outcome.INCONCLUSIVE, None
    return Outcome.REJECT, None


def reasons_for(outcome: str, winner: str | None, verdicts: Mapping[str, Verdict], rule: GateRule) -> list[str]:
    """The outcome in words (first line), then one line per variant, best first."""
    point = rule.mode == "point"
    details = [_verdict_reason(v, rule, point) for v in sorted(verdicts.values(), key=_rank)]
    if outcome == Outcome.PROMOTE:
        win = verdicts[winner]
        evidence = "on point estimates (mode: point)" if point else (
            f"with confidence (p = {win.p_value:.3g} ≤ {win.boundary:.3g}, its level at look {win.look + 1}"
            f"{' after Holm' if rule.holm and len(verdicts) > 1 else ''})")
        head = (f"PROMOTE {win.arm}: it beats baseline and the random control and stays within every guard budget "
                f"{evidence}; target reward {pts(win.reward)} pts, worst guard drop {100 * win.worst_guard_drop:.1f} pts")
        return [head, *details]
    if outcome == Outcome.INCONCLUSIVE:
        near = sorted((v for v in verdicts.values() if not v.passed and v.passed_point and v.status == Status.FINAL),
                      key=_rank)
        return [f"INCONCLUSIVE: {', '.join(v.arm for v in near)} pass on point estimates but not with "
                f"{round(100 * (1 - rule.alpha))}% confidence", *details]
    return ["REJECT: no variant passes the gate, even on point estimates", *details]


def _verdict_reason(v: Verdict, rule: GateRule, point: bool) -> str:
    """Why a variant passed or failed: point-estimate failures first, then confidence failures."""
    on_point, on_confidence = v.failures()
    parts = []
    if v.status in (Status.FUTILE, Status.COLLAPSED, Status.OUTRANKED):
        parts.append(v.note)
    if on_point:
        parts.append("fails " + "; ".join(c.text() for c in on_point))
    if on_confidence and not point:
        parts.append("not shown with confidence: " + "; ".join(c.text() for c in on_confidence))
    if parts:
        return f"{v.arm}: " + ". ".join(parts)
    if not point and not v.passed:
        return (f"{v.arm}: every criterion holds at its level alone, but p = {v.p_value:.3g} is above "
                f"{v.boundary:.3g}, its share of α after Holm across the variants")
    return f"{v.arm}: passes: {'; '.join(c.text() for c in v.criteria)}"


def items_needed(verdicts: Mapping[str, Verdict], design: Design) -> dict[str, int] | None:
    """Items per task at which the best variant passing on point estimates would pass with 80% power.

    From the effects and spreads it showed: for every criterion that holds on the point estimate but
    not with confidence, ``n · ((z_level + z_0.8)·sd / effect)² / n``, the reward's factor applied to
    every target. ``None`` when no such variant or no finite answer exists.
    """
    near = sorted((v for v in verdicts.values() if v.status == Status.FINAL and v.passed_point), key=_rank)
    if not near:
        return None
    verdict = near[0]
    level = design.nominal(len(design.fractions) - 1, verdict.level if not math.isnan(verdict.level)
                           else design.rule.alpha)
    out: dict[str, int] = {}
    for c in verdict.criteria:
        if c.passed:
            continue
        effect = c.estimate - c.threshold
        tasks = [r.name for r in design.targets] if c.task == "reward" else [c.task]
        current = min(verdict.n[t] for t in tasks)
        wanted = stats.items_for_power(effect, c.evidence.se, current, level)
        if not wanted <= MAX_ADVISED_FACTOR * current:  # also inf/nan: no sample size worth naming
            return None
        factor = max(1.0, wanted / current)
        for t in tasks:
            out[t] = max(out.get(t, 0), math.ceil(verdict.n[t] * factor))
    return out or None


def advice(needed: Mapping[str, int], design: Design) -> str:
    """The INCONCLUSIVE reason's second half: how many items, and how to get them."""
    available = design.available or {}
    parts = []
    for task, n in needed.items():
        cap = available.get(task)
        parts.append(f"{task}: {n}" + (f" (more than the {cap} it has)" if cap is not None and n > cap else ""))
    return ("at the observed effects about " + ", ".join(parts) + " items would decide with 80% power; "
            "raise the task limits and re-run with --resume: only the new items are evaluated")


# --- summaries -------------------------------------------------------------------------------------------


def task_summaries(comparisons: Sequence[Comparison], design: Design, evaluated: Mapping[str, Mapping[str, int]]
                   ) -> dict[str, dict[str, Any]]:
    """Per task: role and budget, items evaluated and the limit, the MDE planned (at the limit) and observed."""
    out = {}
    alpha = design.rule.alpha
    for r in design.rules:
        spreads = [(c.evidence.se, c.evidence.n) for c in comparisons
                   if c.task == r.name and c.reference == BASELINE and c.arm in design.variants]
        n = max((by_task.get(r.name, 0) for by_task in evaluated.values()), default=0)
        limit = design.limits[r.name]
        out[r.name] = {"role": r.role, "metric": r.metric, "higher_is_better": r.higher_is_better,
                       "weight": r.weight if r.role == "target" else None,
                       "max_drop": r.max_drop if r.role == "guard" else None, "n": n, "limit": limit,
                       "mde_planned": finite(stats.planned_mde(limit, alpha)),
                       "mde_observed": finite(stats.observed_mde(spreads, alpha))}
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


def arm_scores(scores: Mapping[str, Mapping[str, np.ndarray]], rules: Sequence[TaskRule], alpha: float,
               orient: Sequence[TaskRule] = ()) -> dict[str, dict[str, dict[str, float]]]:
    """Each arm's mean per task with a two-sided (1 − 2α) interval, on the metric's own scale."""
    signs = {r.name: r.sign for r in orient}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_task in scores.items():
        out[arm] = {}
        for r in rules:
            values = signs.get(r.name, 1.0) * np.asarray(by_task[r.name], dtype=np.float64)
            mean, se, low, high = stats.mean_interval(values, alpha)
            out[arm][r.name] = {"mean": mean, "se": finite(se), "ci_low": finite(low), "ci_high": finite(high),
                                "n": int(values.size)}
    return out

