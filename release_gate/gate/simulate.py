"""Simulated gates: the decision rule's size, power and evaluation cost, in the regimes that occur.

Each simulated gate draws 0/1 scores for a baseline on every task, then every other arm as the baseline
with answers flipped independently per item: an arm with discordance π and true effect Δ on a task gains
items the baseline gets wrong at rate ``(π + Δ)/2/(1 − p)`` and loses items it gets right at rate
``(π − Δ)/2/p`` (p: the baseline's accuracy). That is the paired structure surgery produces — most
answers unchanged, a few flipped — and lets a scenario put a guard exactly at its budget edge, make
the controls worse than the baseline so one criterion binds alone, or collapse a guard.

The gate itself is :func:`~.decide.run_gate`, unchanged: its fetch callback hands out prefixes of the
drawn scores and counts the arm × item evaluations, so the same run gives outcomes and cost. Used by
the tests (false-PROMOTE ≤ α in every null scenario, power) and ``benchmarks/bench_sequential.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..schema import BASELINE, Outcome
from .decide import Decision, Design, run_gate
from .rules import GateRule, TaskRule
from .stats import wilson


@dataclass(frozen=True)
class Effect:
    """One arm on one task relative to the baseline: share of items flipped, and the mean change."""

    discordance: float = 0.0
    delta: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """Tasks (name → items), the baseline's accuracy, and every arm's effect per task."""

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

    def rules(self) -> tuple[tuple[TaskRule, ...], tuple[TaskRule, ...]]:
        targets = tuple(TaskRule(t, "acc,none", "target", self.weights.get(t, 1.0)) for t in self.targets)
        guards = tuple(TaskRule(g, "acc,none", "guard", max_drop=self.budgets[g]) for g in self.guards)
        return targets, guards


def draw(scenario: Scenario, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """One set of per-item 0/1 scores for every arm of ``scenario``."""
    tasks = {**scenario.targets, **scenario.guards}
    baseline = {t: (rng.random(n) < scenario.accuracy).astype(float) for t, n in tasks.items()}
    scores = {BASELINE: baseline}
    p = scenario.accuracy
    for arm, effects in {**scenario.variants, **scenario.controls}.items():
        scores[arm] = {}
        for task, n in tasks.items():
            e = effects.get(task, Effect())
            gain = np.clip((e.discordance + e.delta) / 2 / (1 - p), 0.0, 1.0)
            loss = np.clip((e.discordance - e.delta) / 2 / p, 0.0, 1.0)
            flip = rng.random(n) < np.where(baseline[task] > 0, loss, gain)
            scores[arm][task] = np.where(flip, 1.0 - baseline[task], baseline[task])
    return scores


def simulate_gate(scenario: Scenario, rule: GateRule, rng: np.random.Generator) -> Decision:
    """One gate on freshly drawn scores; ``Decision.items`` is what it evaluated."""
    scores = draw(scenario, rng)
    targets, guards = scenario.rules()

    def fetch(request):
        return {arm: {t: scores[arm][t][:n] for t, n in sizes.items()} for arm, sizes in request.items()}

    limits = {**scenario.targets, **scenario.guards}
    design = Design(rule, targets, guards, limits, tuple(scenario.variants), tuple(scenario.controls), with_base=False)
    return run_gate(design, fetch, record_bounds=False, summaries=False)


@dataclass
class Tally:
    """Outcomes and evaluation cost of many gates of one scenario under one rule."""

    scenario: Scenario
    rule: GateRule
    outcomes: Counter = field(default_factory=Counter)
    promoted: Counter = field(default_factory=Counter)
    items: list[int] = field(default_factory=list)

    @property
    def gates(self) -> int:
        return sum(self.outcomes.values())

    @property
    def promote_rate(self) -> float:
        return self.outcomes[Outcome.PROMOTE] / max(self.gates, 1)

    def promote_interval(self) -> tuple[float, float]:
        return wilson(self.outcomes[Outcome.PROMOTE], self.gates)

    @property
    def power(self) -> float:
        """Share of gates that promoted the fit variant (power scenarios)."""
        return self.promoted[self.scenario.fit] / max(self.gates, 1)

    @property
    def mean_items(self) -> float:
        return float(np.mean(self.items)) if self.items else 0.0

    def line(self) -> str:
        low, high = self.promote_interval()
        mode = "sequential" if len(self.rule.fractions) > 1 else "fixed"
        head = f"{self.scenario.name:<44} {mode:<10} gates {self.gates:>5}  "
        if self.scenario.null:
            return head + f"false PROMOTE {100 * self.promote_rate:5.2f}% [95% {100 * low:4.2f}–{100 * high:4.2f}%]"
        return head + f"promoted {self.scenario.fit} {100 * self.power:5.1f}%"


def run(scenario: Scenario, rule: GateRule, gates: int, seed: int = 0) -> Tally:
    """``gates`` independent gates of ``scenario`` under ``rule``."""
    rng = np.random.default_rng(seed)
    tally = Tally(scenario, rule)
    for _ in range(gates):
        decision = simulate_gate(scenario, rule, rng)
        tally.outcomes[decision.outcome] += 1
        if decision.promoted:
            tally.promoted[decision.promoted] += 1
        tally.items.append(decision.items)
    return tally


def fixed_items(scenario: Scenario) -> int:
    """Arm × item evaluations of the fixed design (every arm on every item, base excluded)."""
    arms = 1 + len(scenario.variants) + len(scenario.controls)
    return arms * (sum(scenario.targets.values()) + sum(scenario.guards.values()))


def same_effect(arms: Sequence[str], **effects: Effect) -> dict[str, dict[str, Effect]]:
    """Every arm in ``arms`` with the same per-task effects."""
    return {arm: dict(effects) for arm in arms}


# --- the scenarios the tests and the benchmark run ---------------------------------------------------

VARIANTS = ("abs_select", "smooth_abs", "grad_direction")
CONTROLS = ("random_index@0", "random_index@1", "random_index@2")
UNCHANGED_GUARD = Effect(0.05, 0.0)


def _sparse_null(n: int, discordance: float, variants: int, controls_delta: float, name: str) -> Scenario:
    """Variants as good as the baseline (a few answers flipped both ways); guard unchanged, well within budget."""
    chosen = VARIANTS[:variants]
    return Scenario(
        name, {"target": n}, {"guard": 200}, {"guard": 0.1},
        same_effect(chosen, target=Effect(discordance, 0.0), guard=UNCHANGED_GUARD),
        same_effect(CONTROLS, target=Effect(max(discordance, abs(controls_delta)) + 0.02, controls_delta),
                    guard=UNCHANGED_GUARD))


def null_scenarios() -> list[Scenario]:
    """Every variant is truly unfit: a PROMOTE is a false one. One binding criterion each."""
    return [
        # criterion 1 binds alone: the controls lose answers (the variant beats them easily)
        _sparse_null(120, 0.01, 1, -0.125, "sparse 1% n=120, 1 variant, controls −12.5"),
        _sparse_null(120, 0.05, 3, -0.125, "sparse 5% n=120, 3 variants, controls −12.5"),
        _sparse_null(300, 0.03, 1, -0.05, "sparse 3% n=300, 1 variant, controls −5"),
        _sparse_null(300, 0.05, 3, -0.05, "sparse 5% n=300, 3 variants, controls −5"),
        # criterion 3 binds alone: the target gain is real, the guard drops exactly its budget
        Scenario("guard at budget edge, 8% discordant, n=200", {"target": 300}, {"guard": 200}, {"guard": 0.05},
                 same_effect(VARIANTS, target=Effect(0.2, 0.15), guard=Effect(0.08, -0.05)),
                 same_effect(CONTROLS, target=Effect(0.05, 0.0), guard=UNCHANGED_GUARD)),
        Scenario("guard at budget edge, 24 prompts", {"target": 300}, {"guard": 24}, {"guard": 0.05},
                 same_effect(VARIANTS[:1], target=Effect(0.2, 0.15), guard=Effect(0.05, -0.05)),
                 same_effect(CONTROLS, target=Effect(0.05, 0.0), guard=UNCHANGED_GUARD)),
        # criterion 2 binds alone: every edit helps, the guided one no more than the random ones
        Scenario("variants no better than controls, n=300", {"target": 300}, {"guard": 200}, {"guard": 0.1},
                 same_effect(VARIANTS, target=Effect(0.12, 0.08), guard=UNCHANGED_GUARD),
                 same_effect(CONTROLS, target=Effect(0.12, 0.08), guard=UNCHANGED_GUARD)),
    ]


def multiplicity_scenario() -> Scenario:
    """Three independent null variants, each alone near α (dense, controls far worse): Holm must bind."""
    return Scenario("3 null variants, dense n=400 (Holm binds)", {"target": 400}, {"guard": 200}, {"guard": 0.2},
                    same_effect(VARIANTS, target=Effect(0.4, 0.0), guard=UNCHANGED_GUARD),
                    same_effect(CONTROLS, target=Effect(0.4, -0.3), guard=UNCHANGED_GUARD))


def power_scenario(multiple: float = 2.0, n_target: int = 300, n_guard: int = 150) -> Scenario:
    """Dense regime: one variant gains ``multiple`` × the planned MDE on the target; the others are null."""
    from .stats import planned_mde

    effect = multiple * planned_mde(n_target, 0.05)
    budget = 2.0 * planned_mde(n_guard, 0.05)
    dense = {"target": Effect(0.3, 0.0), "guard": Effect(0.25, 0.0)}
    variants = {v: dict(dense) for v in VARIANTS}
    variants["smooth_abs"] = {"target": Effect(0.3, effect), "guard": Effect(0.25, 0.0)}
    return Scenario(f"{multiple:g}× MDE ({100 * effect:.1f} pts), dense", {"target": n_target}, {"guard": n_guard},
                    {"guard": budget}, variants, same_effect(CONTROLS, target=Effect(0.3, 0.0), guard=Effect(0.25, 0.0)),
                    null=False, fit="smooth_abs")


def cost_scenarios() -> list[Scenario]:
    """The evaluation-cost benchmark: a collapse, everything null, and the hardest near-MDE case."""
    return [
        Scenario("grad_direction-like collapse (+3 target, −40 guard)", {"target": 300}, {"guard": 150}, {"guard": 0.1},
                 same_effect(VARIANTS, target=Effect(0.1, 0.03), guard=Effect(0.45, -0.4)),
                 same_effect(CONTROLS, target=Effect(0.1, 0.0), guard=Effect(0.1, 0.0))),
        Scenario("every variant null", {"target": 300}, {"guard": 150}, {"guard": 0.15},
                 same_effect(VARIANTS, target=Effect(0.1, 0.0), guard=Effect(0.1, 0.0)),
                 same_effect(CONTROLS, target=Effect(0.1, 0.0), guard=Effect(0.1, 0.0))),
        power_scenario(1.0),
    ]
