"""A simulated gate's world: each arm's effect per task, the scenario, and one draw of per-item scores.

Each draw gives per-item scores for a baseline on every task, then every other arm from the baseline's. A
0/1 task flips answers independently per item: an arm with discordance π and true effect Δ gains items
the baseline gets wrong at rate ``(π + Δ)/2/(1 − p)`` and loses items it gets right at rate
``(π − Δ)/2/p`` (p: the baseline's accuracy). That is the paired structure surgery produces — most
answers unchanged, a few flipped — and lets a scenario put a guard exactly at its budget edge, make the
controls worse than the baseline so one criterion binds alone, or collapse a guard. Other metrics
(``Scenario.kinds``) change a share π of the items to a fresh draw whose mean is the baseline's + Δ/π,
so the true mean difference is exactly Δ while the per-item differences are skewed:

* ``fraction``: per-prompt instruction following (IFEval-like): 1–4 instructions per prompt, each followed
  with the baseline's rate p, the score is the share followed ({0, ¼, ⅓, ½, …, 1});
* ``skewed``: a continuous score in [0, 1] with a point mass (``POINT_MASS`` of the items score 0, the
  rest Beta with concentration 2); a changed item rarely breaks to 0 and otherwise gains a little.

Kept apart from :mod:`.simulate` (which runs gates on these draws and names the regimes) because this is
the part a new metric kind or effect model changes, and it needs nothing of the gate but its rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..schema import BASE, BASELINE
from .rules import GateRule, TaskRule

#: Metric kinds a scenario's task can have (see the module docstring).
KINDS = ("binary", "fraction", "skewed")
#: Share of items a ``skewed`` task scores exactly 0 on, and the concentration of its Beta for the rest.
POINT_MASS = 0.3
SPREAD_CONCENTRATION = 2.0
#: Least chance that a changed item of a ``skewed`` task breaks (drops to 0).
BREAK = 0.1
#: Instructions per prompt of a ``fraction`` task (uniform).
INSTRUCTIONS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Effect:
    """One arm on one task relative to the baseline: share of items changed, and the mean change."""

    discordance: float = 0.0
    delta: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """Tasks (name → items), the baseline's accuracy, every arm's effect per task, and how the gate is run."""

    name: str
    targets: Mapping[str, int]
    guards: Mapping[str, int]
    budgets: Mapping[str, float]
    variants: Mapping[str, Mapping[str, Effect]]
    controls: Mapping[str, Mapping[str, Effect]]
    accuracy: float = 0.5
    weights: Mapping[str, float] = field(default_factory=dict)
    #: Whether a PROMOTE here is a false one (every variant is truly unfit) or the hoped-for outcome.
    null: bool = True
    #: The variant a correct PROMOTE names (power scenarios).
    fit: str | None = None
    #: Per task: the metric kind (``KINDS``, default 0/1) and the baseline's mean where not ``accuracy``.
    kinds: Mapping[str, str] = field(default_factory=dict)
    accuracies: Mapping[str, float] = field(default_factory=dict)
    #: Gate settings this scenario needs on top of the rule it is run under (``min_gain``, ``control_reference``).
    gate: Mapping[str, Any] = field(default_factory=dict)
    #: Advised re-runs after an INCONCLUSIVE, and the items each task has for them (default: 4 × its limit).
    reruns: int = 0
    available: Mapping[str, int] = field(default_factory=dict)
    #: The base model's effects per task (scored, so a dead guard can be seen); ``None``: base not scored.
    base: Mapping[str, Effect] | None = None
    #: Put a NaN into the first variant's first target score (the gate must refuse, never PROMOTE).
    nan: bool = False

    def rules(self) -> tuple[tuple[TaskRule, ...], tuple[TaskRule, ...]]:
        targets = tuple(TaskRule(t, "acc,none", "target", self.weights.get(t, 1.0)) for t in self.targets)
        guards = tuple(TaskRule(g, "acc,none", "guard", max_drop=self.budgets[g]) for g in self.guards)
        return targets, guards

    @property
    def limits(self) -> dict[str, int]:
        return {**self.targets, **self.guards}

    def items_available(self) -> dict[str, int]:
        return {t: self.available.get(t, 4 * n if self.reruns else n) for t, n in self.limits.items()}

    def rule(self, rule: GateRule) -> GateRule:
        """``rule`` with this scenario's own gate settings."""
        return GateRule(**{**rule.model_dump(), **self.gate}) if self.gate else rule


def _binary(rng: np.random.Generator, baseline: np.ndarray, p: float, e: Effect) -> np.ndarray:
    gain = np.clip((e.discordance + e.delta) / 2 / (1 - p), 0.0, 1.0) if p < 1 else 0.0
    loss = np.clip((e.discordance - e.delta) / 2 / p, 0.0, 1.0) if p > 0 else 0.0
    flip = rng.random(baseline.size) < np.where(baseline > 0, loss, gain)
    return np.where(flip, 1.0 - baseline, baseline)


def _beta(rng: np.random.Generator, mean: float, concentration: float, n: int) -> np.ndarray:
    mean = float(np.clip(mean, 1e-6, 1 - 1e-6))
    return rng.beta(mean * concentration, (1 - mean) * concentration, n)


def _baseline(rng: np.random.Generator, kind: str, p: float, n: int, prompts: np.ndarray) -> np.ndarray:
    if kind == "binary":
        return (rng.random(n) < p).astype(float)
    if kind == "fraction":
        return rng.binomial(prompts, p) / prompts
    spread = _beta(rng, p / (1 - POINT_MASS), SPREAD_CONCENTRATION, n)
    return np.where(rng.random(n) < POINT_MASS, 0.0, spread)


def _changed(rng: np.random.Generator, kind: str, baseline: np.ndarray, p: float, e: Effect,
             prompts: np.ndarray) -> np.ndarray:
    """An arm's scores on a non-0/1 task: a share π of the items changed, to mean ``p + Δ/π``.

    ``fraction``: the prompt is redrawn with that instruction rate. ``skewed``: the item breaks (drops to
    0) with probability ``j ≥ BREAK``, else moves a share ``1 − s`` of the way to 1, ``j`` and ``s`` solving
    the mean: frequent small gains and rare large losses, the skew a sign-flip test mistakes for an effect.
    """
    if e.discordance <= 0.0:
        return baseline.copy()
    mean = p + e.delta / e.discordance
    if kind == "fraction":
        changed = rng.binomial(prompts, float(np.clip(mean, 0.0, 1.0))) / prompts
    else:
        breaks = max(BREAK, 1.0 - mean / p)
        keep = (1.0 - mean / (1.0 - breaks)) / (1.0 - p)
        if not (-1e-9 <= keep <= 1.0 + 1e-9 and breaks < 1.0):
            raise ValueError(f"a skewed task at mean {p} cannot change by {e.delta} on {e.discordance} of its items")
        keep = min(max(keep, 0.0), 1.0)
        changed = np.where(rng.random(baseline.size) < breaks, 0.0, 1.0 - keep * (1.0 - baseline))
    return np.where(rng.random(baseline.size) < e.discordance, changed, baseline)


def draw(scenario: Scenario, rng: np.random.Generator, n_items: Mapping[str, int] | None = None
         ) -> dict[str, dict[str, np.ndarray]]:
    """One set of per-item scores for every arm of ``scenario`` (``n_items`` per task; default: its limits)."""
    tasks = dict(n_items or scenario.limits)
    arms = {**scenario.variants, **scenario.controls, **({BASE: scenario.base} if scenario.base is not None else {})}
    scores: dict[str, dict[str, np.ndarray]] = {BASELINE: {}, **{arm: {} for arm in arms}}
    for task, n in tasks.items():
        kind, p = scenario.kinds.get(task, "binary"), scenario.accuracies.get(task, scenario.accuracy)
        prompts = rng.choice(INSTRUCTIONS, n)
        baseline = _baseline(rng, kind, p, n, prompts)
        scores[BASELINE][task] = baseline
        for arm, effects in arms.items():
            e = effects.get(task, Effect())
            scores[arm][task] = (_binary(rng, baseline, p, e) if kind == "binary"
                                 else _changed(rng, kind, baseline, p, e, prompts))
    if scenario.nan:
        scores[next(iter(scenario.variants))][next(iter(scenario.targets))][0] = np.nan
    return scores


def same_effect(arms: Sequence[str], **effects: Effect) -> dict[str, dict[str, Effect]]:
    """Every arm in ``arms`` with the same per-task effects."""
    return {arm: dict(effects) for arm in arms}
