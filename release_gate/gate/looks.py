"""The gate's looks (SPEC §7): the design (rules, limits, look schedule) and the state machine that runs it.

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
A guard on which base and baseline score one value on every item evaluated measures nothing
(:func:`dead_guards`): no variant passes while one exists. A non-finite score is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..document import DesignRecord, LookCriterion, LookRecord, LookVariant, PastLookRecord
from ..schema import BASE, BASELINE, Status
from . import boundaries
from .criteria import Board, Criterion, Scores, Verdict, check_scores, criteria_for, finite, oriented, pts
from .rules import GateRule, TaskRule

#: Discordant items a criterion needs before its trend can stop an arm for futility.
FUTILITY_EVIDENCE = 3
#: The items each arm must be scored on at a look: ``{arm: {task: n}}`` → the scores of those items.
Fetch = Callable[[Mapping[str, Mapping[str, int]]], Scores]


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

    def record(self, look: int) -> PastLookRecord:
        """This look as ``decision.json`` records it, ``look`` being its 1-based number in the gate."""
        return PastLookRecord(look=look, run=self.run, date=self.date, n=dict(self.n), t=self.t,
                              nominal_level=finite(self.level))


def history_records(looks: Sequence[PastLook]) -> list[PastLookRecord]:
    """A gate's looks, oldest first, numbered from 1 (``decision.json`` ``history``)."""
    return [look.record(k + 1) for k, look in enumerate(looks)]


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

    def record(self) -> DesignRecord:
        rule = self.rule
        sequential = len(self.times) > 1
        return DesignRecord(
            sequential=len(self.fractions) > 1, looks=[t for _, t in self.schedule], first_look=len(self.history) + 1,
            spending="Lan-DeMets O'Brien-Fleming, then the re-run reserve" if sequential else None,
            rerun_reserve=rule.rerun_reserve, nominal_levels=[self.nominal(k, rule.alpha) for k in range(self.n_looks)],
            futility=rule.futility if len(self.fractions) > 1 else None,
            items={task: [sizes[task] for sizes, _ in self.schedule] for task in self.limits})


class GateRun:
    """The state of one gated run across its looks."""

    def __init__(self, design: Design, fetch: Fetch, record_bounds: bool) -> None:
        self.design, self.fetch, self.record_bounds = design, fetch, record_bounds
        self.rule = design.rule
        self.board = Board()
        self.open = list(design.variants)
        self.verdicts: dict[str, Verdict] = {}
        self.passed: list[str] = []
        self.looks: list[LookRecord] = []
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
        variants = {arm: LookVariant(status=v.status, p_value=v.p_value, boundary=finite(v.boundary), reward=v.reward,
                                     criteria={c.id: self.look_criterion(c) for c in v.criteria})
                    for arm, v in self.verdicts.items() if v.look == look}
        sizes = self.design.sizes(look)
        self.looks.append(LookRecord(look=len(self.design.history) + look + 1, fraction=self.design.schedule[look][1],
                                     n=sizes, nominal_level=self.design.nominal(look, self.rule.alpha),
                                     arms=sorted(a for a, n in self.evaluated.items() if n == sizes), variants=variants))

    def look_criterion(self, c: Criterion) -> LookCriterion:
        """A criterion's numbers at a look; its confidence bound only when asked for (simulations skip it)."""
        return LookCriterion(estimate=c.estimate, p_value=c.p_value, threshold=c.threshold,
                             lcb=finite(c.lcb) if self.record_bounds else None)


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
