"""The decision rule (SPEC §7): which variant, if any, is promoted, and why.

The gate runs look by look (:mod:`.looks`); then the outcome: **PROMOTE** the passing variant with the
highest reward (ties: smaller guard drop, then name); **INCONCLUSIVE** when none passes but one passes
on point estimates at its last look (with the items per task that would decide it, :mod:`.advice`);
**REJECT** otherwise. A guard on which base and baseline score one value on every item evaluated
measures nothing (it cannot show a drop): no variant passes while one exists, and the outcome is
INCONCLUSIVE, the guard named first (REJECT if the variants fail elsewhere on point estimates, or with
``mode: point``, which knows no INCONCLUSIVE). ``mode: point`` judges point estimates only, in one look.
Pure: a fetch callback supplies the scores, a :class:`Decision` comes out; its reasons are written by
:mod:`.words`, its tables by :mod:`.tables`, and :meth:`Decision.document_fields` is its part of
``decision.json`` (:mod:`..document`).

Re-running a gate (the API the simulation uses)::

    first = run_gate(design, fetch)
    again = run_gate(replace(design, limits=raised, history=first.history), fetch)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..document import GateSettings, LookRecord, ScoreSummary, TaskSummary
from ..schema import BASE, BASELINE, Outcome, Status
from . import stats
from .advice import items_needed
from .criteria import Comparison, Scores, Verdict, comparisons_for
from .looks import Design, Fetch, GateRun, PastLook, history_records
from .rules import GateRule, TaskRule
from .tables import arm_scores, task_summaries
from .words import advice, budget_warnings, dead_guard_reasons, no_advice, reasons_for


@dataclass
class Decision:
    """The outcome, the promoted arm, the reasons, and the evidence behind them."""

    outcome: Outcome
    promoted: str | None
    reasons: list[str]
    verdicts: dict[str, Verdict]
    comparisons: list[Comparison]
    tasks: dict[str, TaskSummary]
    arm_scores: dict[str, dict[str, ScoreSummary]]
    rule: GateRule
    design: Design
    looks: list[LookRecord]
    evaluated: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    items_needed: dict[str, int] | None = None

    @property
    def history(self) -> tuple[PastLook, ...]:
        """Every look of the gate so far, this run's included: a re-run's ``Design.history``."""
        return self.design.looks_made(len(self.looks))

    @property
    def items(self) -> int:
        """Arm × item evaluations this decision used."""
        return sum(sum(by_task.values()) for by_task in self.evaluated.values())

    def document_fields(self) -> dict[str, Any]:
        """The gate's part of ``decision.json``: :class:`..document.DecisionDocument` fields by name."""
        r = self.rule
        return {
            "outcome": self.outcome, "reasons": self.reasons, "warnings": self.warnings,
            "gate": GateSettings(mode=r.mode, alpha=r.alpha, min_gain=r.min_gain, holm=r.holm,
                                 control_reference=r.control_reference, sequential=r.sequential, looks=list(r.looks),
                                 futility=r.futility),
            "design": self.design.record(),
            "tasks": self.tasks,
            "comparisons": [c.record() for c in self.comparisons],
            "variants": {name: v.record() for name, v in self.verdicts.items()},
            "looks": self.looks,
            "history": history_records(self.history),
            "evaluated": self.evaluated,
            "items_needed": self.items_needed,
        }


def run_gate(design: Design, fetch: Fetch) -> Decision:
    """Evaluate look by look through ``fetch`` and decide, with everything the report shows (see the module
    docstring): reasons and advice, comparisons, task summaries, arm scores and each look's bounds."""
    gate = GateRun(design, fetch, record_bounds=True)
    gate.run()
    decision, blocked = _outcome(gate, design)
    rule = design.rule
    reasons = reasons_for(decision.outcome, decision.promoted, decision.verdicts, rule, len(design.history))
    if blocked:
        reasons[0] = f"{decision.outcome}: " + "; ".join(dead_guard_reasons(gate.board, design))
    elif decision.outcome == Outcome.INCONCLUSIVE:
        decision.items_needed = items_needed(decision.verdicts, design)
        reasons[0] += "; " + (advice(decision.items_needed, design) if decision.items_needed
                              else no_advice(decision.verdicts, design))
    decision.reasons = reasons
    decision.comparisons = comparisons_for(gate.board, list(gate.board.scores), design.variants, design.controls,
                                           design.targets, design.guards, rule)
    decision.tasks = task_summaries(decision.comparisons, design, gate.evaluated)
    decision.arm_scores = arm_scores(gate.board.scores, design.rules, rule.alpha)
    return decision


def gate_outcome(design: Design, fetch: Fetch) -> Decision:
    """The same looks, verdicts and outcome as :func:`run_gate`, without the report's parts (reasons,
    comparisons, summaries, per-look bounds): what a simulation of thousands of gates needs."""
    gate = GateRun(design, fetch, record_bounds=False)
    gate.run()
    return _outcome(gate, design)[0]


def _outcome(gate: GateRun, design: Design) -> tuple[Decision, bool]:
    """Holm-adjusted verdicts, the outcome and the warnings of a finished gate; and whether a dead guard is
    what keeps a variant fit on every live criterion from passing."""
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
    dead = dead_guard_reasons(gate.board, design)
    blocked = bool(dead) and outcome == Outcome.INCONCLUSIVE  # a variant fit on every live criterion
    if blocked and rule.mode == "point":  # the paper's comparison knows only PROMOTE and REJECT
        outcome = Outcome.REJECT
    live = [r for r in design.rules if r.name not in gate.dead]
    warnings = [*dead, *budget_warnings(live, design.limits, rule.alpha)]
    return Decision(outcome, winner, [], verdicts, [], {}, {}, rule, design, gate.looks, gate.evaluated,
                    warnings), blocked


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


def outcome_of(verdicts: Mapping[str, Verdict]) -> tuple[Outcome, str | None]:
    """PROMOTE / REJECT / INCONCLUSIVE and the promoted arm."""
    passing = sorted((v for v in verdicts.values() if v.passed), key=Verdict.rank)
    if passing:
        return Outcome.PROMOTE, passing[0].arm
    if any(not v.passed and v.passed_point and v.status == Status.FINAL for v in verdicts.values()):
        return Outcome.INCONCLUSIVE, None
    return Outcome.REJECT, None
