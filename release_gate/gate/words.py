"""The gate's decision in words (SPEC §7): the reasons, the INCONCLUSIVE advice, the warnings.

Every sentence a user reads about a decision is written here, from the verdicts and the design; the
numbers behind the advice come from :mod:`.advice`. ``mode: point`` claims no confidence anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..schema import BASE, BASELINE, Outcome, Status, TaskRole
from . import stats
from .advice import MAX_ADVISED_FACTOR, nearest
from .criteria import Board, Verdict, pts
from .looks import Design, dead_guards
from .rules import GateRule, TaskRule


def reasons_for(outcome: str, winner: str | None, verdicts: Mapping[str, Verdict], rule: GateRule,
                earlier_looks: int = 0) -> list[str]:
    """The outcome in words (first line), then one line per variant, best first.

    ``earlier_looks``: looks earlier runs of the gate made (a re-run's look numbers continue theirs).
    """
    point = rule.mode == "point"
    details = [_verdict_reason(v, rule, point) for v in sorted(verdicts.values(), key=Verdict.rank)]
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
                      key=Verdict.rank)
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
    verdict = nearest(verdicts)
    exact = verdict is not None and any(not c.passed and not c.anytime for c in verdict.criteria)
    if design.rule.rerun_reserve == 0 and exact:
        return ("gate.rerun_reserve is 0, so this gate kept no α for re-runs: raising the limits cannot promote a "
                "variant on these tests")
    return (f"the observed effects are too small for more items to settle (over {MAX_ADVISED_FACTOR}× what was "
            "scored would be needed)")


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
        if r.role != TaskRole.GUARD:
            continue
        planned = stats.planned_mde(n_items[r.name], alpha)
        if r.max_drop is not None and r.max_drop < planned:
            warnings.append(
                f"guard {r.name}: budget {100 * r.max_drop:.1f} pts is below its minimum detectable effect "
                f"{100 * planned:.1f} pts at n={n_items[r.name]} (assuming {100 * stats.PLANNED_DISCORDANCE:.0f}% "
                "discordant items): the test can show a variant within it only if the variant changes few of "
                "the guard's items; use more items or a larger budget")
    return warnings
