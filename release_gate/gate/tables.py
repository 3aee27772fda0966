"""The numbers the report tabulates that only the gate can compute: per-task MDEs, per-arm means.

They need the item scores, which stay inside the gate; the report reads them from ``decision.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..document import ScoreSummary, TaskSummary
from ..schema import BASELINE, TaskRole
from . import stats
from .criteria import Comparison, finite
from .looks import Design
from .rules import TaskRule


def task_summaries(comparisons: Sequence[Comparison], design: Design, evaluated: Mapping[str, Mapping[str, int]]
                   ) -> dict[str, TaskSummary]:
    """Per task: role and budget, items evaluated and the limit, the MDE planned (at the limit) and observed."""
    out = {}
    alpha = design.rule.alpha
    for r in design.rules:
        spreads = [(c.evidence.se, c.evidence.n) for c in comparisons
                   if c.task == r.name and c.reference == BASELINE and c.arm in design.variants]
        n = max((by_task.get(r.name, 0) for by_task in evaluated.values()), default=0)
        limit = design.limits[r.name]
        out[r.name] = TaskSummary(role=r.role, metric=r.metric, higher_is_better=r.higher_is_better,
                                  weight=r.weight if r.role == TaskRole.TARGET else None,
                                  max_drop=r.max_drop if r.role == TaskRole.GUARD else None, n=n, limit=limit,
                                  mde_planned=finite(stats.planned_mde(limit, alpha)),
                                  mde_observed=finite(stats.observed_mde(spreads, alpha)))
    return out


def arm_scores(scores: Mapping[str, Mapping[str, np.ndarray]], rules: Sequence[TaskRule], alpha: float
               ) -> dict[str, dict[str, ScoreSummary]]:
    """Each arm's mean per task with a two-sided (1 − 2α) interval, on the metric's own scale.

    ``scores`` are the gate's oriented scores (larger is better), so each rule's sign turns them back.
    """
    out: dict[str, dict[str, ScoreSummary]] = {}
    for arm, by_task in scores.items():
        out[arm] = {}
        for r in rules:
            values = r.sign * np.asarray(by_task[r.name], dtype=np.float64)
            mean, se, low, high = stats.mean_interval(values, alpha)
            out[arm][r.name] = ScoreSummary(mean=mean, se=finite(se), ci_low=finite(low), ci_high=finite(high),
                                            n=int(values.size))
    return out
