"""Simulated gates: the decision rule's size, power and evaluation cost, in the regimes that occur.

A scenario and one draw of its per-item scores come from :mod:`.scenarios` (the effect model and the
metric kinds); this module runs gates on them and names the regimes. The gate itself is
:func:`~.decide.gate_outcome` (:func:`~.decide.run_gate`'s looks and outcome without the report's
parts): its fetch callback hands out prefixes of the drawn scores and counts the arm × item
evaluations, so the same run gives outcomes and cost. A scenario may re-run an INCONCLUSIVE gate as
the product advises (limits raised to the advised items, capped by what each task has, the same items
continued), put a NaN into one score (the gate must refuse it), or score the base
model too (a dead guard: base and baseline without variance). Used by the tests (false-PROMOTE ≤ α in
every null scenario, power), ``benchmarks/bench_sequential.py`` and ``benchmarks/bench_gate_size.py``
(every regime, 2,000 gates each).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import ReleaseGateError
from ..schema import Outcome
from .advice import items_needed
from .decide import Decision, gate_outcome
from .looks import Design
from .rules import GateRule
from .scenarios import Effect, Scenario, draw, same_effect
from .stats import wilson

#: The outcome a gate that refused its input (a NaN score) is tallied under.
REFUSED = "refused"


def simulate_gate(scenario: Scenario, rule: GateRule, rng: np.random.Generator) -> Decision:
    """One gate on freshly drawn scores, re-run as advised after INCONCLUSIVE up to ``scenario.reruns`` times.

    Every run continues the same items (only the new ones are drawn on a real run) and the earlier runs'
    looks (``Design.history``): the fetch callback hands out prefixes of one draw. ``Decision.items`` is
    what the last run evaluated (a re-run reuses the earlier runs' items).
    """
    available = scenario.items_available()
    scores = draw(scenario, rng, available)
    targets, guards = scenario.rules()
    rule = scenario.rule(rule)

    def fetch(request):
        return {arm: {t: scores[arm][t][:n] for t, n in sizes.items()} for arm, sizes in request.items()}

    design = Design(rule, targets, guards, scenario.limits, tuple(scenario.variants), tuple(scenario.controls),
                    with_base=scenario.base is not None, available=available)
    decision = gate_outcome(design, fetch)
    for _ in range(scenario.reruns):
        if decision.outcome != Outcome.INCONCLUSIVE:
            break
        raised = advised_limits(decision, design, available)
        if raised == design.limits:
            break
        design = replace(design, limits=raised, history=decision.history)
        decision = gate_outcome(design, fetch)
    return decision


def advised_limits(decision: Decision, design: Design, available: Mapping[str, int]) -> dict[str, int]:
    """The limits an INCONCLUSIVE's advice asks for: the items it names, capped by what each task has."""
    needed = items_needed(decision.verdicts, design) or {}
    return {t: min(max(n, needed.get(t, n)), available[t]) for t, n in design.limits.items()}


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

    @property
    def mode(self) -> str:
        return "sequential" if len(self.rule.fractions) > 1 else "fixed"

    def line(self) -> str:
        low, high = self.promote_interval()
        head = f"{self.scenario.name:<44} {self.mode:<10} gates {self.gates:>5}  "
        if self.scenario.null:
            return head + f"false PROMOTE {100 * self.promote_rate:5.2f}% [95% {100 * low:4.2f}–{100 * high:4.2f}%]"
        return head + f"promoted {self.scenario.fit} {100 * self.power:5.1f}%"


def run(scenario: Scenario, rule: GateRule, gates: int, seed: int = 0) -> Tally:
    """``gates`` independent gates of ``scenario`` under ``rule``; a refused input is tallied as ``REFUSED``."""
    rng = np.random.default_rng(seed)
    tally = Tally(scenario, rule)
    for _ in range(gates):
        try:
            decision = simulate_gate(scenario, rule, rng)
        except (ValueError, ReleaseGateError):
            if not scenario.nan:
                raise
            tally.outcomes[REFUSED] += 1
            continue
        tally.outcomes[decision.outcome] += 1
        if decision.promoted:
            tally.promoted[decision.promoted] += 1
        tally.items.append(decision.items)
    return tally


def fixed_items(scenario: Scenario) -> int:
    """Arm × item evaluations of the fixed design (every arm on every item, base excluded)."""
    arms = 1 + len(scenario.variants) + len(scenario.controls)
    return arms * (sum(scenario.targets.values()) + sum(scenario.guards.values()))


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


def power_scenario(multiple: float = 2.0, n_target: int = 300, n_guard: int = 150, seeds: int = 3,
                   reference: str = "mean") -> Scenario:
    """Dense regime: one variant gains ``multiple`` × the planned MDE on the target; the others are null."""
    from .stats import planned_mde

    effect = multiple * planned_mde(n_target, 0.05)
    budget = 2.0 * planned_mde(n_guard, 0.05)
    dense = {"target": Effect(0.3, 0.0), "guard": Effect(0.25, 0.0)}
    variants = {v: dict(dense) for v in VARIANTS}
    variants["smooth_abs"] = {"target": Effect(0.3, effect), "guard": Effect(0.25, 0.0)}
    suffix = "" if (seeds, reference) == (3, "mean") else f", K={seeds} {reference}"
    return Scenario(f"{multiple:g}× MDE ({100 * effect:.1f} pts), dense{suffix}", {"target": n_target},
                    {"guard": n_guard}, {"guard": budget}, variants,
                    same_effect(CONTROLS[:seeds], target=Effect(0.3, 0.0), guard=Effect(0.25, 0.0)),
                    null=False, fit="smooth_abs", gate={"control_reference": reference} if reference != "mean" else {})


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


# --- the regimes where wrong PROMOTEs live (issue 19): each a null scenario -----------------------------

#: A target gain every criterion but the one under test shows easily, and controls far behind.
CLEAR_GAIN = Effect(0.2, 0.15)
FAR_BEHIND = Effect(0.3, -0.2)
FLAT = Effect()


def _control_null(variant: Effect, control: Effect, seeds: int, reference: str, name: str) -> Scenario:
    """Criterion 2 binds alone: variant and controls have the same true gain, guard unchanged."""
    return Scenario(f"{name}, K={seeds} {reference}", {"target": 300}, {"guard": 200}, {"guard": 0.1},
                    same_effect(VARIANTS[:1], target=variant, guard=UNCHANGED_GUARD),
                    same_effect(CONTROLS[:seeds], target=control, guard=UNCHANGED_GUARD),
                    gate={"control_reference": reference} if reference != "mean" else {})


def control_regimes() -> list[Scenario]:
    """A variant noisier (25 % of items changed) or quieter (5 %) than its controls, same +5 pts: K = 1–3, mean/each."""
    noisy, quiet = Effect(0.25, 0.05), Effect(0.05, 0.05)
    out = [_control_null(noisy, quiet, k, "mean", "noisier variant (25% vs 5%), both +5") for k in (1, 2, 3)]
    out.append(_control_null(noisy, quiet, 3, "each", "noisier variant (25% vs 5%), both +5"))
    out += [_control_null(quiet, noisy, k, ref, "quieter variant (5% vs 25%), both +5")
            for k, ref in ((1, "mean"), (3, "mean"), (3, "each"))]
    return out


def _guard_edge(name: str, n: int, budget: float, effect: Effect, kind: str = "binary", accuracy: float = 0.5,
                guards: int = 1) -> Scenario:
    """Criterion 3 binds alone: a clear target gain, one guard's true drop exactly its budget (others unchanged)."""
    names = [f"guard{i}" if guards > 1 else "guard" for i in range(guards)]
    effects = {g: (effect if i == 0 else UNCHANGED_GUARD) for i, g in enumerate(names)}
    return Scenario(name, {"target": 300}, dict.fromkeys(names, n), dict.fromkeys(names, budget),
                    {VARIANTS[0]: {"target": CLEAR_GAIN, **effects}},
                    same_effect(CONTROLS, target=Effect(0.05, 0.0), **dict.fromkeys(names, UNCHANGED_GUARD)),
                    kinds={names[0]: kind}, accuracies={names[0]: accuracy})


def _target_null(name: str, n: int, variant: Effect, control: Effect, kind: str = "binary", accuracy: float = 0.5,
                 **extra: Any) -> Scenario:
    """Criterion 1 binds alone: the variant's true reward is its threshold, controls far behind, guard unchanged."""
    return Scenario(name, {"target": n}, {"guard": 200}, {"guard": 0.1},
                    same_effect(VARIANTS[:1], target=variant, guard=UNCHANGED_GUARD),
                    same_effect(CONTROLS, target=control, guard=UNCHANGED_GUARD),
                    kinds={"target": kind}, accuracies={"target": accuracy}, **extra)


def metric_regimes() -> list[Scenario]:
    """Non-0/1 guards at their budget edge (sparse, large changes) and non-0/1 targets at zero gain."""
    return [
        _guard_edge("fraction guard, 1-pt budget edge, 16 prompts", 16, 0.01, Effect(0.05, -0.01), "fraction", 0.8),
        _guard_edge("fraction guard at 5-pt budget edge, 16 prompts", 16, 0.05, Effect(0.1, -0.05), "fraction", 0.8),
        _guard_edge("fraction guard at 5-pt budget edge, 64 prompts", 64, 0.05, Effect(0.2, -0.05), "fraction", 0.8),
        _guard_edge("fraction guard at 5-pt budget edge, 200 prompts", 200, 0.05, Effect(0.2, -0.05), "fraction", 0.8),
        _guard_edge("skewed [0,1] guard at 5-pt budget edge, n=64", 64, 0.05, Effect(0.2, -0.05), "skewed", 0.4),
        _target_null("skewed [0,1] target at zero gain, n=24", 24, Effect(0.4, 0.0), Effect(0.6, -0.2), "skewed", 0.4),
        _target_null("skewed [0,1] target at zero gain, n=64", 64, Effect(0.4, 0.0), Effect(0.6, -0.2), "skewed", 0.4),
        _target_null("skewed [0,1] target at zero gain, n=200", 200, Effect(0.4, 0.0), Effect(0.6, -0.2), "skewed",
                     0.4),
        _target_null("fraction target at zero gain, n=64", 64, Effect(0.3, 0.0), Effect(0.5, -0.2), "fraction", 0.6),
    ]


def design_regimes() -> list[Scenario]:
    """``min_gain`` at its edge, weighted targets, several guards, worst-case discordance, floor and ceiling,
    limits smaller than the looks."""
    two_targets = Scenario(
        "two weighted targets (3:1), reward exactly 0", {"t1": 200, "t2": 200}, {"guard": 200}, {"guard": 0.1},
        {VARIANTS[0]: {"t1": Effect(0.1, -0.02), "t2": Effect(0.2, 0.06), "guard": UNCHANGED_GUARD}},
        same_effect(CONTROLS, t1=FAR_BEHIND, t2=FAR_BEHIND, guard=UNCHANGED_GUARD), weights={"t1": 3.0, "t2": 1.0})
    tiny = Scenario("3 items per task, 4 looks", {"target": 3}, {"guard": 3}, {"guard": 0.1},
                    same_effect(VARIANTS[:1], target=Effect(0.4, 0.0), guard=FLAT),
                    same_effect(CONTROLS, target=FAR_BEHIND, guard=FLAT))
    return [
        _target_null("min_gain 5 pts at its edge, n=300", 300, Effect(0.15, 0.05), FAR_BEHIND, gate={"min_gain": 0.05}),
        two_targets,
        _guard_edge("3 guards, one at its 5-pt budget edge, n=200", 200, 0.05, Effect(0.08, -0.05), guards=3),
        *(_guard_edge(f"guard at budget edge, {100 * pi:.0f}% discordant, n=200", 200, 0.05, Effect(pi, -0.05))
          for pi in (0.2, 0.5, 0.75)),
        _target_null("floor target (3% accuracy), n=300", 300, Effect(0.02, 0.0), Effect(0.03, -0.03), accuracy=0.03),
        _target_null("ceiling target (97% accuracy), n=300", 300, Effect(0.02, 0.0), Effect(0.1, -0.05),
                     accuracy=0.97),
        _guard_edge("floor guard (3%) at 2-pt budget edge, n=200", 200, 0.02, Effect(0.03, -0.02), accuracy=0.03),
        _guard_edge("ceiling guard (97%) at 5-pt budget edge, n=200", 200, 0.05, Effect(0.06, -0.05), accuracy=0.97),
        tiny,
    ]


def rerun_regimes() -> list[Scenario]:
    """Criterion 1 binds alone and INCONCLUSIVE is common: re-run once or three times as the advice says."""
    return [_target_null(f"{runs} advised re-run{'s' if runs > 1 else ''}, {100 * pi:.0f}% discordant, n=300", 300,
                         Effect(pi, 0.0), Effect(pi + 0.1, -0.05), reruns=runs)
            for runs in (1, 3) for pi in (0.05, 0.2)]


def refusal_regimes() -> list[Scenario]:
    """Inputs that must never PROMOTE: a guard every arm scores 0 on (base too), a NaN score."""
    dead = Scenario("dead guard (base and every arm 0 on it)", {"target": 300}, {"guard": 200}, {"guard": 0.05},
                    same_effect(VARIANTS[:1], target=CLEAR_GAIN, guard=FLAT),
                    same_effect(CONTROLS, target=Effect(0.05, 0.0), guard=FLAT), accuracies={"guard": 0.0},
                    base={"target": Effect(0.05, 0.0), "guard": FLAT})
    nan = Scenario("NaN in a variant's target score", {"target": 300}, {"guard": 200}, {"guard": 0.1},
                   same_effect(VARIANTS[:1], target=CLEAR_GAIN, guard=UNCHANGED_GUARD),
                   same_effect(CONTROLS, target=Effect(0.05, 0.0), guard=UNCHANGED_GUARD), nan=True)
    return [dead, nan]


def regimes() -> list[Scenario]:
    """Every null regime of the size table: today's scenarios, then those of issue 19."""
    return [*null_scenarios(), multiplicity_scenario(), *control_regimes(), *metric_regimes(), *design_regimes(),
            *rerun_regimes(), *refusal_regimes()]


def power_scenarios() -> list[Scenario]:
    """0/1 targets at twice the planned MDE: K = 3 seed mean (the default), K = 1, K = 3 each."""
    return [power_scenario(2.0), power_scenario(2.0, seeds=1), power_scenario(2.0, reference="each")]
