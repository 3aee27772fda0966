"""The gate's tests, each where it is valid: exact for 0/1 against one reference, betting for the rest.

What stays exact is checked against exact references (``binomtest``, every table enumerated); the
betting test (:mod:`release_gate.gate.betting`) by its size in the regimes where the old tests failed
(issue 19, paths 1 and 2: a variant noisier than its controls with the same gain, skewed continuous
differences, a fractional guard at its budget edge, an unchanged guard) — each asserted through the
Wilson interval of the rejection rate — and by its power at twice the MDE. Then the declared ranges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from release_gate.config import load_run_config
from release_gate.errors import BadInput
from release_gate.gate import stats
from release_gate.gate.betting import BettingTest, Stratum, log_wealth
from release_gate.gate.criteria import check_scores
from release_gate.gate.decide import decide
from release_gate.gate.evidence import PairedData, judge
from release_gate.gate.rules import GateRule, TaskRule

ALPHA = 0.05
CONTROLS = ["random_index@0", "random_index@1", "random_index@2"]


def _size_ok(rejections: int, trials: int) -> bool:
    """Not shown to exceed α: the Wilson 95 % interval of the rejection rate reaches down to α or below."""
    return stats.wilson(rejections, trials)[0] <= ALPHA


def _flip(rng, base, discordance, delta):
    """An arm that differs from ``base`` (0/1, mean ½) on a share ``discordance`` of items, gaining ``delta``."""
    up = rng.random(base.size) < (discordance + delta)
    down = rng.random(base.size) < (discordance - delta)
    arm = base.copy()
    arm[(base == 0) & up] = 1.0
    arm[(base == 1) & down] = 0.0
    return arm


# --- what stays exact ------------------------------------------------------------------------------------


def test_routing_exact_for_0_1_against_one_reference_betting_otherwise() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 50).astype(float)
    one = PairedData.of(_flip(rng, base, 0.2, 0.05), base)
    assert judge(one).test.name == "exact McNemar" and not judge(one).anytime
    assert judge(one, -0.05).test.name.startswith("exact-unconditional") and not judge(one, -0.05).anytime
    seeds = PairedData.of(base, np.column_stack([base, _flip(rng, base, 0.2, 0.0)]))
    fractions = PairedData.of(base * 0.5, base[:, None])
    targets = PairedData.of(base, base, None, np.r_[np.zeros(25), np.ones(25)])
    for data in (seeds, fractions, targets):
        assert judge(data).test.name.startswith("betting") and judge(data).anytime


def test_mcnemar_is_binomtest_and_exact_by_enumeration() -> None:
    """p = binomtest on the discordant items; its size, every table of n = 10 enumerated, is ≤ α for every
    discordance rate on the null (p10 = p01)."""
    n = 10
    tables = [(w, loss) for w in range(n + 1) for loss in range(n + 1 - w)]
    p = {}
    for wins, losses in tables:
        v = np.r_[np.ones(wins), np.zeros(losses), np.zeros(n - wins - losses)]
        b = np.r_[np.zeros(wins), np.ones(losses), np.zeros(n - wins - losses)]
        p[wins, losses] = judge(PairedData.of(v, b)).p_value(0.0)
        reference = sps.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
        assert p[wins, losses] == pytest.approx(reference, abs=1e-12)
    for pi in np.linspace(0.0, 1.0, 21):
        size = sum(sps.multinomial.pmf([w, loss, n - w - loss], n, [pi / 2, pi / 2, 1 - pi])
                   for w, loss in tables if p[w, loss] <= ALPHA)
        assert size <= ALPHA + 1e-12


# --- the betting test: valid for any distribution on the range -------------------------------------------


def test_betting_p_value_is_monotone_and_its_bound_agrees() -> None:
    """``p(θ)`` never decreases in θ (so the bisection is exact) and ``lcb > θ ⟺ p(θ) ≤ level``."""
    rng = np.random.default_rng(1)
    for _ in range(40):
        n, k = int(rng.integers(5, 120)), int(rng.choice([2, 3]))
        base = rng.integers(0, 2, n).astype(float)
        data = PairedData.of(_flip(rng, base, 0.2, 0.06), np.column_stack([_flip(rng, base, 0.05, 0) for _ in range(k)]))
        evidence = judge(data)
        thetas = np.linspace(-1, 1, 81)
        ps = [evidence.p_value(t) for t in thetas]
        assert np.all(np.diff(ps) >= -1e-12)
        for level in (0.05, 0.01):
            bound = evidence.lower(level)
            for t in (-0.1, -0.02, 0.0, 0.03):
                assert (bound > t) == (evidence.p_value(t) <= level)
            assert evidence.upper(level) >= data.delta >= bound


def _size(draw, threshold: float, trials: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    return sum(judge(draw(rng), threshold).p_value(threshold) <= ALPHA for _ in range(trials))


@pytest.mark.parametrize("k", [2, 3])
def test_noisy_variant_does_not_beat_quiet_controls_with_the_same_gain(k) -> None:
    """Issue 19 path 1: variant changes 25 % of 300 items, controls 5 %, all gain +5 pts: the variant does not
    beat the controls. The K + 1 label permutation said it did in 9.6–12.7 % (K = 3) and 7.8 % (K = 2)."""
    def draw(rng):
        base = (rng.random(300) < 0.5).astype(float)
        controls = np.column_stack([_flip(rng, base, 0.05, 0.05) for _ in range(k)])
        return PairedData.of(_flip(rng, base, 0.25, 0.05), controls)

    trials = 1500
    rejections = _size(draw, 0.0, trials, 10 + k)
    assert _size_ok(rejections, trials), f"K={k}: {rejections}/{trials}"


def _left_skewed(rng, n, theta=0.0):
    """Differences with mean ``theta``: most items gain a little, a few lose much (``v, c`` in [0, 1])."""
    z = rng.beta(0.3, 3.0, n)  # right-skewed on [0, 1], mean 1/11
    d = theta + 0.5 * (1 / 11 - z)
    c = np.full(n, 0.5)
    return PairedData.of(c + d, c)


@pytest.mark.parametrize("n", [24, 64, 200])
def test_skewed_continuous_null_keeps_its_size(n) -> None:
    """Issue 19 path 2: a skewed continuous target with mean difference exactly 0 (the shifted sign-flip
    passed 7.8 % at n = 24, 16.8 % at 64, 9.9 % at 200)."""
    trials = 2000
    rejections = _size(lambda rng: _left_skewed(rng, n), 0.0, trials, n)
    assert _size_ok(rejections, trials), f"n={n}: {rejections}/{trials}"


def _fraction_guard(rng, n, budget):
    """Per-prompt instruction fractions: a few prompts lose everything, a fifth gain a quarter; mean −budget."""
    lose = 2 * budget  # P(−1) = 2b, P(+¼) = 4b: mean −2b + b = −b
    u = rng.random(n)
    d = np.where(u < lose, -1.0, np.where(u < lose + 4 * budget, 0.25, 0.0))
    c = np.where(d < 0, 1.0, np.where(d > 0, 0.75, rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n)))
    return PairedData.of(c + d, c)


@pytest.mark.parametrize("n", [16, 24, 64, 200])
def test_fractional_guard_at_its_budget_edge_keeps_its_size(n) -> None:
    """True drop = budget (5 pts) on a fractional guard: a pass is a false one (the shifted sign-flip passed
    14.6 % at n = 16, 10.1 % at 24, 8.8–9.1 % at 64, 6.0 % at 200)."""
    trials = 2000
    rejections = _size(lambda rng: _fraction_guard(rng, n, 0.05), -0.05, trials, 100 + n)
    assert _size_ok(rejections, trials), f"n={n}: {rejections}/{trials}"


def test_unchanged_guard_cannot_pass_a_budget_it_has_too_few_items_for() -> None:
    """Issue 19 path 2: a fractional guard unchanged on 16 prompts passed ANY budget (sign-flip p = 2⁻¹⁶).

    With every ``d = 0`` the wealth for ``θ = −b`` grows by ``1 + f·b/(1 − b)`` per item at most (the bet f ≤ 1
    of the whole stake): at best ``(1 − b)^−n``, so ``p ≥ (1 − b)ⁿ = 0.95¹⁶ = 0.44`` — the exact answer, as a
    guard that drops every item with probability b is unchanged on all 16 with that probability. The mixture
    over bets f ≤ 0.95 gives a little more. 200 unchanged prompts do show a 5-point budget.
    """
    values = np.tile([0.25, 0.5, 0.75, 1.0], 4)
    evidence = judge(PairedData.of(values, values), -0.05)
    assert evidence.test.name.startswith("betting")
    assert 0.95**16 <= evidence.p_value(-0.05) < 0.7
    assert evidence.p_value(-0.01) > 0.9 and evidence.lower(ALPHA) < -0.05
    many = np.tile(values, 13)[:200]
    assert judge(PairedData.of(many, many), -0.05).p_value(-0.05) < 1e-3


def test_unchanged_fractional_guard_no_longer_promotes() -> None:
    """The whole gate: a clearly better target, a fractional guard left exactly unchanged on 16 prompts with a
    1-point budget. The shifted sign-flip passed the guard (p = 2⁻¹⁶) and PROMOTEd."""
    n = 200
    base = np.tile([1.0, 0.0], n // 2)
    better = base.copy()
    better[1:81:2] = 1.0
    guard = np.tile([0.25, 0.5, 0.75, 1.0], 4)
    scores = {a: {"t": base, "g": guard} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": better, "g": guard}
    targets = [TaskRule("t", "acc,none", "target")]
    guards = [TaskRule("g", "inst_level_strict_acc,none", "guard", max_drop=0.01)]
    d = decide(scores, targets, guards, GateRule(sequential=False), ["abs_select"], CONTROLS)
    guard_criterion = d.verdicts["abs_select"].criteria[-1]
    assert guard_criterion.id == "guard:g" and guard_criterion.anytime and not guard_criterion.passed
    assert d.outcome != "PROMOTE"


def test_weighted_targets_are_valid_under_their_composite_null() -> None:
    """Two targets of different weights and skews, reward exactly 0 (light target +15 pts, heavy −5): the
    product of per-task e-processes minimised over the null hyperplane holds α."""
    trials = 600
    rng = np.random.default_rng(3)
    rejections = 0
    for _ in range(trials):
        heavy = _left_skewed(rng, 60, -0.05)
        light = _left_skewed(rng, 40, 0.15)
        data = PairedData.of(np.r_[heavy.variant, light.variant], np.r_[heavy.references, light.references],
                             np.r_[np.full(60, 0.75 / 60), np.full(40, 0.25 / 40)], np.r_[np.zeros(60), np.ones(40)])
        rejections += judge(data).p_value(0.0) <= ALPHA
    assert _size_ok(rejections, trials), f"{rejections}/{trials}"


def test_weighted_minimum_is_a_lower_bound_of_the_true_infimum() -> None:
    """The grid minimum never exceeds the product at any point of the null hyperplane (conservative)."""
    rng = np.random.default_rng(4)
    strata = (Stratum(rng.uniform(-0.2, 0.6, 30), 0.6, 1.0), Stratum(rng.uniform(-0.5, 0.3, 50), 0.4, 1.0))
    test = BettingTest(strata)
    theta = 0.02
    logs = [log_wealth(strata[0].d, m, 1.0)[-1] + log_wealth(strata[1].d, (theta - 0.6 * m) / 0.4, 1.0)[-1]
            for m in np.linspace(-1.0, 1.0, 2001) if -1.0 <= (theta - 0.6 * m) / 0.4 <= 1.0]
    assert -math.log(test.p_value(theta)) <= min(logs) + 1e-9


def test_power_at_twice_the_mde_for_0_1_targets() -> None:
    """Betting against the seed mean of 3 controls, at 2 × the MDE the planning table prints: ≥ 80 %."""
    n, trials = 381, 300
    rng = np.random.default_rng(5)
    sd = math.sqrt(0.14 + 0.05 / 3)
    effect = 2 * stats.mde(sd, n, ALPHA)
    passed = 0
    for _ in range(trials):
        base = (rng.random(n) < 0.5).astype(float)
        controls = np.column_stack([_flip(rng, base, 0.05, 0.0) for _ in range(3)])
        passed += judge(PairedData.of(_flip(rng, base, 0.14, effect), controls)).p_value(0.0) <= ALPHA
    assert passed / trials >= 0.8, f"{passed}/{trials} at Δ = {effect:.3f}"


# --- declared ranges ---------------------------------------------------------------------------------------


def test_scores_outside_the_declared_range_are_refused() -> None:
    rules = [TaskRule("t", "acc,none", "target"), TaskRule("ppl", "word_perplexity,none", "guard", max_drop=2.0,
                                                              higher_is_better=False, range=(1.0, 50.0))]
    check_scores({"baseline": {"t": np.array([0.0, 1.0]), "ppl": np.array([3.0, 49.0])}}, rules)
    with pytest.raises(ValueError, match=r"task t: arm abs_select scores 1\.5 on item 1, outside .*\[0, 1\]"):
        check_scores({"abs_select": {"t": np.array([0.0, 1.5])}}, rules)
    with pytest.raises(ValueError, match="task ppl: arm baseline scores 60"):
        check_scores({"baseline": {"ppl": np.array([60.0])}}, rules)
    scores = {a: {"t": np.array([0.0, 1.0, 2.0])} for a in ["baseline", "abs_select", *CONTROLS]}
    with pytest.raises(ValueError, match="task t: arm"):
        decide(scores, rules[:1], [], GateRule(sequential=False), ["abs_select"], CONTROLS)


def test_a_wider_range_widens_the_bets_scale() -> None:
    """A metric on [0, 100] is the same test as its [0, 1] version on scores / 100 (differences scale with W)."""
    rng = np.random.default_rng(6)
    v, c = rng.random(80), rng.random((80, 1))
    small = judge(PairedData.of(v, c), -0.05)
    large = judge(PairedData.of(100 * v, 100 * c, None, None, [100.0]), -5.0)
    assert large.p_value(-5.0) == pytest.approx(small.p_value(-0.05), rel=1e-9)
    assert large.lower(ALPHA) == pytest.approx(100 * small.lower(ALPHA), rel=1e-6)


def _write(tmp_path, config):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_declares_ranges_and_refuses_an_unbounded_guard(tmp_path, base_config) -> None:
    base_config["guards"] = [{"task": "wikitext", "metric": "word_perplexity,none", "max_drop": 1.0,
                              "higher_is_better": False}]
    with pytest.raises(BadInput, match=r"guards\[0\]\.range: metric 'word_perplexity,none' is unbounded"):
        load_run_config(_write(tmp_path, base_config))
    base_config["guards"][0]["range"] = [1.0, 1000.0]
    rule = load_run_config(_write(tmp_path, base_config)).guard_rules[0]
    assert rule.range == (1.0, 1000.0) and rule.width == 999.0
    base_config["guards"][0]["range"] = [5.0, 5.0]
    with pytest.raises(BadInput, match=r"guards\[0\]\.range: must be \[lo, hi\] with finite lo < hi"):
        load_run_config(_write(tmp_path, base_config))
    assert load_run_config(_write(tmp_path, {**base_config, "guards": []})).target_rules[0].range == (0.0, 1.0)
