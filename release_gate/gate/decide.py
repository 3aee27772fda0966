"""The decision rule (SPEC §7): which variant, if any, is promoted, and why, in words.

Evaluation happens in looks (:class:`Design`): at each look the arms still needed are scored on the
first n items of every task (items come in a seeded random order, so every prefix is a random sample),
each open variant's criteria are tested (:mod:`.criteria`) and judged against the look's nominal level
(:mod:`.boundaries`: alpha spending over the gate's information time; one look in fixed mode), or, for
an anytime-valid criterion, against the variant's share of α itself. A gate's looks continue across
runs: a re-run that raises the limits gets the earlier runs' looks as ``Design.history`` (the pipeline
reads them from the look ledger beside the item store) and spends only the α the first run kept for
re-runs (``gate.rerun_reserve``), so re-running after INCONCLUSIVE does not reset α.
Holm across variants runs as a graphical procedure: a variant that passes hands its share of α to
the others, which are then tested again at the same look. Between looks an open variant stops when a
guard has certainly broken its budget (``collapsed``), when its conditional power under the current
trend is below ``gate.futility`` (``futile``), or when a variant with a higher reward has already
passed (``outranked``); stopping is non-binding, so it never raises the false-PROMOTE rate. The
baseline, the base model and the controls are evaluated as far as an open variant needs them.

Outcome: **PROMOTE** the passing variant with the highest reward (ties: smaller guard drop, then
name); **INCONCLUSIVE** when none passes but one passes on point estimates at its last look (with the
items per task that would decide it); **REJECT** otherwise. A guard on which base and baseline score
one value on every item evaluated measures nothing (it cannot show a drop): no variant passes while one
exists, and the outcome is INCONCLUSIVE, the guard named first (REJECT if the variants fail elsewhere
on point estimates, or with ``mode: point``, which knows no INCONCLUSIVE). A non-finite score is an error. ``mode: point`` judges point estimates only, in one look. Pure: a fetch
callback supplies the scores, a :class:`Decision` comes out.

Re-running a gate (the API the simulation uses)::

    first = run_gate(design, fetch)
    again = run_gate(replace(design, limits=raised, history=first.history), fetch)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from ..schema import BASE, BASELINE, Outcome, Status, rank_key
from . import boundaries, stats
from .criteria import (
    Board,
    Comparison,
    Criterion,
    Scores,
    Verdict,
    check_scores,
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
#: Fixed-point rounds of the INCONCLUSIVE advice (items needed ↔ the level a re-run with them gets).
ADVICE_ROUNDS = 4


@dataclass(frozen=True)
class PastLook:
    """A look the gate has made: items per task, information time (1 = the first run's limits), level at α.

    ``run`` and ``date`` say which run made it (filled in by the pipeline's look ledger).
    """

    n: Mapping[str, int]
    t: float
    level: float = math.nan
    run: str | None = None
    date: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "date": self.date, "n": dict(self.n), "t": self.t, "nominal_level": finite(self.level)}


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
    #: The looks earlier runs of this gate made (oldest first): this run continues their alpha spending.
    history: tuple[PastLook, ...] = ()

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("decide: no candidate variants")
        if not self.controls:
            raise ValueError("decide: at least one random-index control is required")
        if self.history and set(self.history[-1].n) != set(self.limits):
            raise ValueError(f"decide: the earlier looks scored tasks {sorted(self.history[-1].n)}, "
                             f"this run {sorted(self.limits)}")
        if not self.schedule:
            raise ValueError("decide: no look adds items to the earlier looks "
                             f"({dict(self.history[-1].n)}); raise a task's limit beyond them")

    @property
    def rules(self) -> tuple[TaskRule, ...]:
        return (*self.targets, *self.guards)

    @property
    def fractions(self) -> tuple[float, ...]:
        return self.rule.fractions

    @cached_property
    def schedule(self) -> tuple[tuple[dict[str, int], float], ...]:
        """This run's looks: items per task and information time, each look adding items.

        The planned looks are the rule's fractions of each limit. A first run gives them the fractions
        as times (looks that would repeat the same items merge into the later one). A later run raises
        every look to the items the gate has already seen, drops looks that add none (those items were
        tested before), and times the rest by :func:`.boundaries.continued_times`.
        """
        planned = [{task: boundaries.look_sizes(limit, self.fractions)[k] for task, limit in self.limits.items()}
                   for k in range(len(self.fractions))]
        if not self.history:
            looks: list[tuple[dict[str, int], float]] = []
            for sizes, fraction in zip(planned, self.fractions):
                if looks and looks[-1][0] == sizes:
                    looks.pop()
                looks.append((sizes, fraction))
            return tuple(looks)
        last = self.history[-1]
        previous, fresh = dict(last.n), []
        for sizes in planned:
            raised = {task: max(n, previous[task]) for task, n in sizes.items()}
            if any(raised[task] > previous[task] for task in raised):
                fresh.append(raised)
                previous = raised
        return tuple(zip(fresh, boundaries.continued_times((dict(last.n), last.t), fresh)))

    @property
    def n_looks(self) -> int:
        return len(self.schedule)

    @property
    def times(self) -> tuple[float, ...]:
        """Information times of every look of the gate: the earlier runs', then this run's."""
        return (*(h.t for h in self.history), *(t for _, t in self.schedule))

    def sizes(self, look: int) -> dict[str, int]:
        return dict(self.schedule[look][0])

    def fraction(self, look: int) -> float:
        """The look's share of this run's last look's information (conditional power's time scale)."""
        return self.schedule[look][1] / self.schedule[-1][1]

    def nominal(self, look: int, alpha: float) -> float:
        """Nominal level of this run's ``look`` for a hypothesis given ``alpha``, every earlier look counted."""
        return boundaries.nominal_levels(alpha, self.times, self.rule.rerun_reserve)[len(self.history) + look]

    def looks_made(self, count: int) -> tuple[PastLook, ...]:
        """The gate's looks after this run made its first ``count``: the history continued."""
        return (*self.history, *(PastLook(self.sizes(k), self.schedule[k][1], self.nominal(k, self.rule.alpha))
                                 for k in range(count)))

    def to_json(self) -> dict[str, Any]:
        rule = self.rule
        sequential = len(self.times) > 1
        return {"sequential": len(self.fractions) > 1, "looks": [t for _, t in self.schedule],
                "first_look": len(self.history) + 1,
                "spending": "Lan-DeMets O'Brien-Fleming, then the re-run reserve" if sequential else None,
                "rerun_reserve": rule.rerun_reserve,
                "nominal_levels": [self.nominal(k, rule.alpha) for k in range(self.n_looks)],
                "futility": rule.futility if len(self.fractions) > 1 else None,
                "items": {task: [sizes[task] for sizes, _ in self.schedule] for task in self.limits}}


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
    def history(self) -> tuple[PastLook, ...]:
        """Every look of the gate so far, this run's included: a re-run's ``Design.history``."""
        return self.design.looks_made(len(self.looks))

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
            "history": [dict(look=k + 1, **h.to_json()) for k, h in enumerate(self.history)],
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
        #: Guards that measure nothing on the items seen so far (see :func:`dead_guards`).
        self.dead: list[str] = []

    @property
    def last(self) -> int:
        return self.design.n_looks - 1

    def level(self) -> float:
        """Each open hypothesis's share of α (Holm: passed variants hand theirs on)."""
        remaining = len(self.design.variants) - len(self.passed)
        if not self.rule.holm or remaining <= 1:
            return self.rule.alpha
        return self.rule.alpha / remaining

    def run(self) -> None:
        for look in range(self.design.n_looks):
            self.score(look)
            self.judge(look)
            self.stop_early(look)
            self.record(look)
            if not self.open:
                break

    def score(self, look: int) -> None:
        sizes = self.design.sizes(look)
        arms = [BASELINE, *((BASE,) if self.design.with_base else ()), *self.design.controls, *self.open]
        fetched = self.fetch({arm: sizes for arm in arms})
        check_finite(fetched, sizes)
        check_scores(fetched, self.design.rules)
        fetched = oriented(fetched, self.design.rules)
        for arm in arms:
            self.board.scores[arm] = fetched[arm]
            self.evaluated[arm] = dict(sizes)

    def threshold(self, criterion: Criterion, look: int, share: float) -> float:
        """A criterion's level at ``look`` for a hypothesis given ``share`` of α: the share itself for an
        anytime-valid test, the look's nominal (spending) level for an exact fixed-n one."""
        return share if criterion.anytime else self.design.nominal(look, share)

    def passes(self, verdict: Verdict, look: int, share: float) -> bool:
        return all(c.p_value <= self.threshold(c, look, share) for c in verdict.criteria)

    def judge(self, look: int) -> None:
        self.dead = dead_guards(self.board, self.design)
        for arm in self.open:
            criteria = criteria_for(self.board, arm, self.design.targets, self.design.guards, self.design.controls,
                                    self.rule, self.design.nominal(look, self.rule.alpha))
            for c in criteria:
                c.level = self.threshold(c, look, self.rule.alpha)
            self.verdicts[arm] = Verdict(arm, criteria, look, self.design.schedule[look][1], self.board.n(arm))
        point = self.rule.mode == "point"
        while self.open and not self.dead:
            level = self.level()
            boundary = self.design.nominal(look, level)
            newly = [a for a in self.open if (self.verdicts[a].passed_point if point
                                              else self.passes(self.verdicts[a], look, level))]
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
        fraction = self.design.fraction(look)
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
        self.looks.append({"look": len(self.design.history) + look + 1, "fraction": self.design.schedule[look][1],
                           "n": self.design.sizes(look),
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
    dead = dead_guard_reasons(gate.board, design)
    blocked = bool(dead) and outcome == Outcome.INCONCLUSIVE  # a variant fit on every live criterion
    if blocked and rule.mode == "point":  # the paper's comparison knows only PROMOTE and REJECT
        outcome = Outcome.REJECT
    live = [r for r in design.rules if r.name not in gate.dead]
    warnings = [*dead, *budget_warnings(live, design.limits, rule.alpha)]
    if not summaries:
        return Decision(outcome, winner, [], verdicts, [], {}, {}, rule, design, gate.looks, gate.evaluated, warnings)
    reasons = reasons_for(outcome, winner, verdicts, rule, len(design.history))
    needed = None
    if blocked:
        reasons[0] = f"{outcome}: " + "; ".join(dead)
    elif outcome == Outcome.INCONCLUSIVE:
        needed = items_needed(verdicts, design)
        reasons[0] += "; " + (advice(needed, design) if needed else no_advice(verdicts, design))
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


def reasons_for(outcome: str, winner: str | None, verdicts: Mapping[str, Verdict], rule: GateRule,
                earlier_looks: int = 0) -> list[str]:
    """The outcome in words (first line), then one line per variant, best first.

    ``earlier_looks``: looks earlier runs of the gate made (a re-run's look numbers continue theirs).
    """
    point = rule.mode == "point"
    details = [_verdict_reason(v, rule, point) for v in sorted(verdicts.values(), key=_rank)]
    if outcome == Outcome.PROMOTE:
        win = verdicts[winner]
        holm = " after Holm" if rule.holm and len(verdicts) > 1 else ""
        look = win.look + 1 + earlier_looks
        evidence = "on point estimates (mode: point)" if point else (
            f"with confidence (p = {win.p_value:.3g} ≤ {win.boundary:.3g}, its level at look {look}{holm})"
            if win.p_value <= win.boundary else
            f"with confidence (every criterion within its level at look {look}{holm}; the anytime-valid ones "
            "against the variant's whole share of α)")
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


def _near(verdicts: Mapping[str, Verdict]) -> Verdict | None:
    """The best variant that passes on point estimates at the end of its evaluation, if any."""
    near = sorted((v for v in verdicts.values() if v.status == Status.FINAL and v.passed_point), key=_rank)
    return near[0] if near else None


def items_needed(verdicts: Mapping[str, Verdict], design: Design) -> dict[str, int] | None:
    """Items per task at which the best variant passing on point estimates would pass a re-run with 80% power.

    From the effects and spreads it showed: for every criterion that holds on the point estimate but
    not with confidence, ``n · ((z_level + z_0.8)·sd / effect)² / n``, the reward's factor applied to
    every target. The level is the one the re-run would get: the variant's share of α for an
    anytime-valid criterion; for an exact one, the nominal level of the last look of a run with those
    limits that continues this gate's looks (found by a few fixed-point rounds: more items, a later
    look, another level). ``None`` when no such variant or no finite answer exists (also when the gate
    kept no α for re-runs).
    """
    verdict = _near(verdicts)
    if verdict is None:
        return None
    share = verdict.level if not math.isnan(verdict.level) else design.rule.alpha
    history = design.looks_made(design.n_looks)
    level = design.nominal(design.n_looks - 1, share)
    out: dict[str, int] | None = None
    for _ in range(ADVICE_ROUNDS):
        out = _items_at(verdict, design, share, level)
        if out is None:
            return None
        limits = {**design.limits, **out}
        if all(limits[t] <= history[-1].n[t] for t in limits):
            return out
        rerun = replace(design, limits=limits, history=history)
        level = rerun.nominal(rerun.n_looks - 1, share)
    return out


def _items_at(verdict: Verdict, design: Design, share: float, level: float) -> dict[str, int] | None:
    """Items per task for 80% power when exact criteria are tested at ``level``, anytime ones at ``share``."""
    out: dict[str, int] = {}
    for c in verdict.criteria:
        if c.passed:
            continue
        effect = c.estimate - c.threshold
        tasks = [r.name for r in design.targets] if c.task == "reward" else [c.task]
        current = min(verdict.n[t] for t in tasks)
        wanted = stats.items_for_power(effect, c.evidence.se, current, share if c.anytime else level)
        if not wanted <= MAX_ADVISED_FACTOR * current:  # also inf/nan: no sample size worth naming
            return None
        factor = max(1.0, wanted / current)
        for t in tasks:
            out[t] = max(out.get(t, 0), math.ceil(verdict.n[t] * factor))
    return out or None


def about(n: int) -> str:
    """A count rounded up to three significant digits, with thousands separators (13,130 → 13,200)."""
    step = 10 ** max(0, len(str(n)) - 3)
    return f"{-(-n // step) * step:,}"


def advice(needed: Mapping[str, int], design: Design) -> str:
    """The INCONCLUSIVE reason's second half: how many items would decide, and how to get them, or why not."""
    available = design.available or {}
    needed = {t: n for t, n in needed.items() if n > design.limits[t]} or needed  # only the tasks that must grow
    short = {t: available[t] for t, n in needed.items() if t in available and n > available[t]}
    if short:
        task, cap = next(iter(short.items()))
        return (f"at the observed effect about {about(needed[task])} items of {task} would be needed; the task has "
                f"only {cap:,}, so this effect is too small to show with it")
    tasks = list(needed)
    counts = " and ".join(f"{about(needed[t])} items of {t}" if i == 0 else f"{about(needed[t])} of {t}"
                          for i, t in enumerate(tasks))
    raise_to = (f"raise its limit to {about(needed[tasks[0]])}" if len(tasks) == 1
                else "raise their limits to these")
    return (f"at the observed effect about {counts} would decide (80% power); {raise_to} and re-run with --resume: "
            f"only the new items are scored and the gate continues from look {len(design.history) + design.n_looks + 1}, "
            "spending the α it kept for re-runs")


def no_advice(verdicts: Mapping[str, Verdict], design: Design) -> str:
    """Why an INCONCLUSIVE names no number of items."""
    verdict = _near(verdicts)
    exact = verdict is not None and any(not c.passed and not c.anytime for c in verdict.criteria)
    if design.rule.rerun_reserve == 0 and exact:
        return ("gate.rerun_reserve is 0, so this gate kept no α for re-runs: raising the limits cannot promote a "
                "variant on these tests")
    return (f"the observed effects are too small for more items to settle (over {MAX_ADVISED_FACTOR}× what was "
            "scored would be needed)")


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


def check_finite(scores: Scores, sizes: Mapping[str, int]) -> None:
    """Refuse a non-finite score (a NaN would make every test's null distribution NaN and pass it)."""
    for arm, by_task in scores.items():
        for task in sizes:
            values = np.asarray(by_task[task], dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ValueError(f"decide: arm {arm}, task {task}, item {int(bad[0])}: score {values[bad[0]]} is not "
                                 "finite; every score must be a finite number")


def dead_guards(board: Board, design: Design) -> list[str]:
    """Guards on which the reference arms (base and baseline, or baseline alone) each score one value on every
    item seen: no item they can fail and pass, so no drop can show there, and passing them means nothing."""
    references = [BASELINE, *((BASE,) if design.with_base else ())]
    return [g.name for g in design.guards
            if all(np.ptp(board.scores[arm][g.name]) == 0 for arm in references if board.scores[arm][g.name].size)]


def dead_guard_reasons(board: Board, design: Design) -> list[str]:
    """Each dead guard in words, with what the reference arms scored (on the metric's own scale)."""
    out = []
    dead = dead_guards(board, design)
    for g in design.guards:
        if g.name not in dead:
            continue
        values = {arm: g.sign * float(board.scores[arm][g.name][0]) for arm in (BASE, BASELINE)
                  if arm in board.scores and (arm == BASELINE or design.with_base)}
        n = board.scores[BASELINE][g.name].size
        if len(set(values.values())) == 1:
            who = "base and baseline score" if len(values) == 2 else "baseline scores"
            seen = f"{who} {values[BASELINE]:g} on all {n} items"
        else:
            seen = f"base scores {values[BASE]:g} and baseline {values[BASELINE]:g} on all {n} items"
        out.append(f"guard {g.name}: {seen}, so it cannot show a drop; no variant can be promoted on it — use items "
                   "the models can pass and fail")
    return out


def budget_warnings(rules: Sequence[TaskRule], n_items: Mapping[str, int], alpha: float) -> list[str]:
    """Guards whose budget is below the planned MDE show non-inferiority only for variants that change few items."""
    warnings = []
    for r in rules:
        if r.role != "guard":
            continue
        planned = stats.planned_mde(n_items[r.name], alpha)
        if r.max_drop is not None and r.max_drop < planned:
            warnings.append(
                f"guard {r.name}: budget {100 * r.max_drop:.1f} pts is below its minimum detectable effect "
                f"{100 * planned:.1f} pts at n={n_items[r.name]} (assuming {100 * stats.PLANNED_DISCORDANCE:.0f}% "
                "discordant items): the test can show a variant within it only if the variant changes few of "
                "the guard's items; use more items or a larger budget")
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

