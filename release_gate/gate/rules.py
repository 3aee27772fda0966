"""What the gate is asked to decide: task roles, budgets, and the decision settings.

These are the ``targets``, ``guards`` and ``gate`` sections of the run
config; validation errors name the config key so a user can find it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput

MODES = ("statistical", "point")
CONTROL_REFERENCES = ("mean", "each")


@dataclass(frozen=True)
class TaskRule:
    """One scored task: a target (weighted into the reward) or a guard (with a drop budget).

    ``metric`` is lm-eval's ``metric,filter`` key; values are on the metric's
    own scale (0–1 for accuracies), and ``max_drop`` is on that scale too.
    """

    name: str
    metric: str
    role: str
    weight: float = 1.0
    max_drop: float | None = None
    higher_is_better: bool = True

    @property
    def sign(self) -> float:
        """Orientation that makes larger always better."""
        return 1.0 if self.higher_is_better else -1.0


#: Default looks of the sequential gate: fractions of each task's limit.
DEFAULT_LOOKS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class GateRule:
    """The decision settings (SPEC §7).

    ``sequential`` evaluates in ``looks`` (fractions of each task's limit) with O'Brien–Fleming alpha
    spending; an arm whose conditional power falls below ``futility`` stops early (non-binding).
    ``mode: point`` (the paper's comparison of point estimates) always evaluates everything at once.
    """

    alpha: float = 0.05
    min_gain: float = 0.0
    mode: str = "statistical"
    holm: bool = True
    control_reference: str = "mean"
    sequential: bool = True
    looks: tuple[float, ...] = DEFAULT_LOOKS
    futility: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise BadInput(f"gate.alpha: must be in (0, 0.5), got {self.alpha}")
        if self.min_gain < 0:
            raise BadInput(f"gate.min_gain: must be ≥ 0, got {self.min_gain}")
        if self.mode not in MODES:
            raise BadInput(f"gate.mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.control_reference not in CONTROL_REFERENCES:
            raise BadInput(f"gate.control_reference: must be one of {', '.join(CONTROL_REFERENCES)}, "
                           f"got {self.control_reference!r}")
        looks = tuple(self.looks)
        if not looks or any(not 0.0 < f <= 1.0 for f in looks) or abs(looks[-1] - 1.0) > 1e-12 or any(
                b <= a for a, b in zip(looks, looks[1:])):
            raise BadInput(f"gate.looks: must be increasing fractions in (0, 1] ending at 1, got {list(looks)}")
        if not 0.0 <= self.futility < 0.5:
            raise BadInput(f"gate.futility: the conditional power below which an arm stops must be in [0, 0.5), "
                           f"got {self.futility}")

    @property
    def fractions(self) -> tuple[float, ...]:
        """The looks actually used: one look at everything unless sequential and statistical."""
        return tuple(float(f) for f in self.looks) if self.sequential and self.mode == "statistical" else (1.0,)


def check_task_rules(targets: list[TaskRule], guards: list[TaskRule]) -> None:
    """A usable set of rules: at least one target, positive weights, non-negative budgets, no task twice."""
    if not targets:
        raise BadInput("targets: at least one target task is required")
    seen: set[str] = set()
    for section, rules in (("targets", targets), ("guards", guards)):
        for i, rule in enumerate(rules):
            where = f"{section}[{i}]"
            if rule.name in seen:
                raise BadInput(f"{where}.task: {rule.name!r} appears twice (a task is a target or a guard, once)")
            seen.add(rule.name)
            if section == "targets" and not rule.weight > 0:
                raise BadInput(f"{where}.weight: must be > 0, got {rule.weight}")
            if section == "guards" and (rule.max_drop is None or rule.max_drop < 0):
                raise BadInput(f"{where}.max_drop: the alignment-tax budget must be a number ≥ 0, got {rule.max_drop}")
