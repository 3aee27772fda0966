"""The gate's statistics and decision rule, against scipy/statsmodels and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from release_gate.gate import stats
from release_gate.gate.decide import decide
from release_gate.gate.rules import GateRule, TaskRule

CONTROLS = ["random_index@0", "random_index@1", "random_index@2"]


def test_paired_matches_scipy_paired_t() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=80)
    arm = ref + rng.normal(0.2, 0.5, size=80)
    e = stats.paired(arm, ref)
    test = sps.ttest_rel(arm, ref, alternative="greater")
    assert e.p_above(0.0) == pytest.approx(test.pvalue, rel=1e-9)
    assert e.lower(0.05) == pytest.approx(test.confidence_interval(0.95).low, rel=1e-9)
    shifted = sps.ttest_1samp(arm - ref - 0.1, 0.0, alternative="greater")
    assert e.p_above(0.1) == pytest.approx(shifted.pvalue, rel=1e-9)
    assert (e.p_above(0.1) < 0.05) == (e.lower(0.05) > 0.1)


def test_binary_paired_agrees_with_mcnemar() -> None:
    """0/1 scores: b items won, c items lost; one-sided t ≈ half the two-sided McNemar z test."""
    b, c, same = 40, 22, 300
    arm = np.array([1] * b + [0] * c + [1] * (same // 2) + [0] * (same - same // 2), dtype=float)
    ref = np.array([0] * b + [1] * c + [1] * (same // 2) + [0] * (same - same // 2), dtype=float)
    e = stats.paired(arm, ref)
    assert e.discordant == b + c
    assert e.delta == pytest.approx((b - c) / len(arm))
    chi2 = mcnemar([[same // 2, b], [c, same - same // 2]], exact=False, correction=False)
    assert e.p_above(0.0) == pytest.approx(chi2.pvalue / 2, rel=0.05)


def test_holm_matches_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_weighted_reward_hand_computed() -> None:
    a = stats.Estimate(0.10, 0.02, 100, 99.0)
    b = stats.Estimate(0.02, 0.04, 50, 49.0)
    r = stats.weighted([a, b], [3.0, 1.0])
    assert r.delta == pytest.approx(0.75 * 0.10 + 0.25 * 0.02)
    assert r.se == pytest.approx(math.sqrt((0.75 * 0.02) ** 2 + (0.25 * 0.04) ** 2))
    v1, v2 = (0.75 * 0.02) ** 2, (0.25 * 0.04) ** 2
    assert r.df == pytest.approx((v1 + v2) ** 2 / (v1**2 / 99 + v2**2 / 49))
    single = stats.weighted([a], [2.0])
    assert (single.delta, single.se, single.df) == (a.delta, a.se, a.df)


def test_degenerate_spreads() -> None:
    same = stats.paired(np.ones(30), np.ones(30))
    assert same.delta == 0 and same.se == 0 and same.p_above(0.0) == 1.0 and same.p_above(-0.01) == 0.5**30
    one = stats.paired(np.ones(1), np.zeros(1))
    assert math.isinf(one.se) and one.p_above(0.0) == 1.0 and one.lower(0.05) == -math.inf
    with pytest.raises(ValueError):
        stats.paired(np.ones(3), np.ones(4))


def test_mde_has_the_stated_power() -> None:
    """A true effect equal to the MDE is detected in ≈80% of paired t-tests."""
    rng = np.random.default_rng(2)
    n, sd, alpha = 200, 0.5, 0.05
    effect = stats.mde(sd, n, alpha)
    assert effect == pytest.approx((sps.norm.ppf(0.95) + sps.norm.ppf(0.8)) * sd / math.sqrt(n))
    hits = sum(stats.paired(rng.normal(effect, sd, n), np.zeros(n)).p_above(0.0) < alpha for _ in range(2000))
    assert 0.76 < hits / 2000 < 0.84


# --- the decision rule ----------------------------------------------------------------------------------


def _binary(rng: np.random.Generator, theta: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """0/1 outcomes for one arm: items share a difficulty θ_i, so arms are positively correlated."""
    return (rng.random(theta.size) < np.clip(theta + shift, 0.0, 1.0)).astype(float)


def _gate(rng, n_target=300, n_guard=150, target_shift=None, guard_shift=None, budget=0.1, rule=None):
    """One simulated gate: three variants, three controls, one target, one guard."""
    target_shift = target_shift or {}
    guard_shift = guard_shift or {}
    theta_t, theta_g = rng.beta(2, 2, n_target), rng.beta(2, 2, n_guard)
    arms = ["baseline", "abs_select", "smooth_abs", "grad_direction", *CONTROLS]
    scores = {a: {"csqa": _binary(rng, theta_t, target_shift.get(a, 0.0)),
                  "ifeval": _binary(rng, theta_g, guard_shift.get(a, 0.0))} for a in arms}
    return decide(scores, [TaskRule("csqa", "acc,none", "target")],
                  [TaskRule("ifeval", "prompt_level_strict_acc,none", "guard", max_drop=budget)],
                  rule or GateRule(), ["abs_select", "smooth_abs", "grad_direction"], CONTROLS)


def test_null_false_promote_rate_is_at_most_alpha() -> None:
    """No real effect anywhere (variants = baseline + item-level noise): PROMOTE in ≤ α of 300 gates."""
    rng = np.random.default_rng(3)
    outcomes = [_gate(rng).outcome for _ in range(300)]
    assert outcomes.count("PROMOTE") / len(outcomes) <= 0.05
    assert outcomes.count("INCONCLUSIVE") > 0  # noise does pass on point estimates sometimes


def test_twice_the_mde_is_promoted_at_least_80_percent() -> None:
    rng = np.random.default_rng(4)
    n_target, n_guard = 300, 150
    probe = _gate(rng, n_target, n_guard)
    effect = 2 * probe.tasks["csqa"]["mde_observed"]
    budget = 2 * probe.tasks["ifeval"]["mde_observed"]
    wins = []
    for _ in range(200):
        d = _gate(rng, n_target, n_guard, target_shift={"smooth_abs": effect}, budget=budget)
        wins.append(d.promoted == "smooth_abs")
    assert sum(wins) / len(wins) >= 0.8


def test_guard_collapse_is_rejected_naming_the_guard() -> None:
    """The paper's grad_direction on IFEval: target +3 pts, guard −40 pts."""
    rng = np.random.default_rng(5)
    d = _gate(rng, target_shift={"grad_direction": 0.03}, guard_shift={"grad_direction": -0.4}, budget=0.02)
    assert d.outcome in ("REJECT", "INCONCLUSIVE")
    assert not d.verdicts["grad_direction"].passed_point
    reason = next(r for r in d.reasons if r.startswith("grad_direction:"))
    assert "fails guard ifeval" in reason and "budget" in reason
    guard = next(c for c in d.verdicts["grad_direction"].criteria if c.id == "guard:ifeval")
    assert guard.estimate.delta < -0.2 and not guard.passed_point


def test_clear_winner_hand_built() -> None:
    """Deterministic scores: abs_select wins 40 items, loses none; guard unchanged."""
    n = 200
    base = np.zeros(n)
    win = base.copy()
    win[:40] = 1.0
    small = base.copy()
    small[:5] = 1.0
    guard = np.tile([1.0, 0.0], 50)
    scores = {a: {"t": base, "g": guard} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": win, "g": guard}
    scores["smooth_abs"] = {"t": small, "g": guard}
    targets = [TaskRule("t", "acc,none", "target")]
    guards = [TaskRule("g", "acc,none", "guard", max_drop=0.05)]
    d = decide(scores, targets, guards, GateRule(), ["abs_select", "smooth_abs"], CONTROLS)
    assert d.outcome == "PROMOTE" and d.promoted == "abs_select"
    v = d.verdicts["abs_select"]
    assert v.reward == pytest.approx(0.2) and v.worst_guard_drop == 0.0
    ids = [c.id for c in v.criteria]
    assert ids == ["beats_baseline", "beats_control", "guard:g"]
    reward = sps.ttest_1samp(win - base, 0.0, alternative="greater").pvalue
    assert v.criteria[0].p_value == pytest.approx(reward)
    assert d.reasons[0].startswith("PROMOTE abs_select")
    each = decide(scores, targets, guards, GateRule(control_reference="each"), ["abs_select"], CONTROLS)
    assert [c.id for c in each.verdicts["abs_select"].criteria][1:4] == [f"beats_control:{c}" for c in CONTROLS]


def test_point_mode_promotes_what_statistics_call_inconclusive() -> None:
    n = 100
    base = np.tile([1.0, 0.0], n // 2)
    better = base.copy()
    better[1] = 1.0  # one item: +1 pt, far below any confidence
    scores = {a: {"t": base} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": better}
    targets = [TaskRule("t", "acc,none", "target")]
    statistical = decide(scores, targets, [], GateRule(), ["abs_select"], CONTROLS)
    point = decide(scores, targets, [], GateRule(mode="point"), ["abs_select"], CONTROLS)
    assert statistical.outcome == "INCONCLUSIVE" and statistical.promoted is None
    assert point.outcome == "PROMOTE" and point.promoted == "abs_select"


def test_lower_is_better_metric_is_oriented() -> None:
    """A perplexity-like target: the variant that lowers it is the better one."""
    rng = np.random.default_rng(6)
    base = rng.normal(10, 1, 100)
    scores = {a: {"ppl": base + rng.normal(0, 0.01, 100)} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"ppl": base - 0.5}
    d = decide(scores, [TaskRule("ppl", "word_perplexity,none", "target", higher_is_better=False)], [],
               GateRule(), ["abs_select"], CONTROLS)
    assert d.promoted == "abs_select" and d.verdicts["abs_select"].reward > 0


def test_budget_below_mde_warns() -> None:
    d = _gate(np.random.default_rng(7), n_guard=32, budget=0.02)
    assert any("guard ifeval" in w and "minimum detectable effect" in w for w in d.warnings)


def test_three_items_all_improved_are_not_proof():
    """Zero spread makes the t bound degenerate; the sign test (p = 0.5ⁿ) decides instead."""
    scores = {a: {"t": np.zeros(3)} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": np.ones(3)}
    targets = [TaskRule("t", "acc,none", "target")]
    assert decide(scores, targets, [], GateRule(), ["abs_select"], CONTROLS).outcome == "INCONCLUSIVE"
    scores = {a: {"t": np.zeros(8)} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": np.ones(8)}
    assert decide(scores, targets, [], GateRule(), ["abs_select"], CONTROLS).outcome == "PROMOTE"
