"""What the gate is asked to decide: task roles, budgets, and the decision settings.

These are the ``targets``, ``guards`` and ``gate`` sections of the run
config; validation errors name the config key so a user can find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator

from ..schema import TaskRole
from ..validation import Flag, Number, Section, check


@dataclass(frozen=True)
class TaskRule:
    """One scored task: a target (weighted into the reward) or a guard (with a drop budget).

    ``metric`` is lm-eval's ``metric,filter`` key; values are on the metric's
    own scale (0–1 for accuracies), and ``max_drop`` is on that scale too.
    ``range`` is that scale's declared ``(lo, hi)``: every per-item score lies in it, which is what
    makes the betting tests valid for any distribution of the scores (SPEC §7).
    """

    name: str
    metric: str
    role: TaskRole
    weight: float = 1.0
    max_drop: float | None = None
    higher_is_better: bool = True
    range: tuple[float, float] = (0.0, 1.0)

    @property
    def sign(self) -> float:
        """Orientation that makes larger always better."""
        return 1.0 if self.higher_is_better else -1.0

    @property
    def width(self) -> float:
        """``hi − lo``: two arms' per-item difference lies in ``[−width, width]``."""
        return float(self.range[1] - self.range[0])

    def check(self, arm: str, values: np.ndarray) -> None:
        """``ValueError`` naming the task, the arm and the first item whose score is outside ``range``."""
        lo, hi = self.range
        values = np.asarray(values, dtype=np.float64)
        outside = np.flatnonzero(~((values >= lo) & (values <= hi)))
        if outside.size:
            i = int(outside[0])
            raise ValueError(f"task {self.name}: arm {arm} scores {float(values[i])!r} on item {i}, outside the metric's "
                             f"declared range [{lo:g}, {hi:g}] ({outside.size} such items); declare the metric's "
                             "range on the task (range: [lo, hi])")


#: Default looks of the sequential gate: fractions of each task's limit.
DEFAULT_LOOKS = (0.25, 0.5, 0.75, 1.0)


def _looks(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value or any(not 0.0 < f <= 1.0 for f in value) or abs(value[-1] - 1.0) > 1e-12 or any(
            b <= a for a, b in zip(value, value[1:])):
        raise ValueError(f"must be increasing fractions in (0, 1] ending at 1, got {list(value)}")
    return value


class GateRule(Section):
    """The decision settings (SPEC §7; the run config's ``gate:`` section).

    ``sequential`` evaluates in ``looks`` (fractions of each task's limit) with O'Brien–Fleming alpha
    spending; an arm whose conditional power falls below ``futility`` stops early (non-binding).
    ``rerun_reserve`` is the share of α the first run of a gate leaves for later runs that raise the limits
    (:mod:`.boundaries`; 0: a re-run cannot promote on the exact tests).
    ``mode: point`` (the paper's comparison of point estimates) always evaluates everything at once.
    """

    alpha: Annotated[Number, check(lambda v: 0.0 < v < 0.5, "must be in (0, 0.5)")] = 0.05
    min_gain: Annotated[Number, check(lambda v: v >= 0, "must be ≥ 0")] = 0.0
    mode: Literal["statistical", "point"] = "statistical"
    holm: Flag = True
    control_reference: Literal["mean", "each"] = "mean"
    sequential: Flag = True
    looks: Annotated[tuple[Number, ...], AfterValidator(_looks)] = DEFAULT_LOOKS
    futility: Annotated[Number, check(lambda v: 0.0 <= v < 0.5, "the conditional power below which an arm "
                                                                "stops must be in [0, 0.5)")] = 0.05
    rerun_reserve: Annotated[Number, check(lambda v: 0.0 <= v < 1.0, "the share of α kept for re-runs that raise "
                                                                      "the limits must be in [0, 1)")] = 0.2

    @property
    def fractions(self) -> tuple[float, ...]:
        """The looks actually used: one look at everything unless sequential and statistical."""
        return tuple(float(f) for f in self.looks) if self.sequential and self.mode == "statistical" else (1.0,)
