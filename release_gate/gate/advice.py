"""How many items would decide an INCONCLUSIVE gate (the numbers behind its advice, SPEC §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from ..schema import Status
from . import stats
from .criteria import Verdict
from .looks import Design

#: An INCONCLUSIVE names the items that would decide only up to this multiple of what was scored: beyond
#: it the observed effect is too small for any practical run, and the reason says so without a number.
MAX_ADVISED_FACTOR = 100
#: Fixed-point rounds of the INCONCLUSIVE advice (items needed ↔ the level a re-run with them gets).
ADVICE_ROUNDS = 4


def nearest(verdicts: Mapping[str, Verdict]) -> Verdict | None:
    """The best variant that passes on point estimates at the end of its evaluation, if any."""
    near = sorted((v for v in verdicts.values() if v.status == Status.FINAL and v.passed_point), key=Verdict.rank)
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
    verdict = nearest(verdicts)
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
