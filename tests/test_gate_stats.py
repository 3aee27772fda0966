"""The gate's exact tests and decision rule, against exact references and by simulation.

References: ``scipy.stats.binomtest`` (McNemar for 0/1 scores), exhaustive enumeration of every sign
flip / relabelling on small cases, a brute-force supremum for the margin test and the exact size of
the guard test at its budget edge (every table enumerated), gsDesign's published O'Brien–Fleming
boundaries. Then every branch of the decision on hand-built scores, and the simulation in one regime per
criterion and per wrong-PROMOTE path of issue 19 (fixed and sequential, 200 gates each; the 2,000-gate
table of every regime is ``benchmarks/bench_gate_size.py``'s).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import gammaln
from statsmodels.stats.multitest import multipletests

from release_gate.gate import boundaries, simulate, stats
from release_gate.gate.decide import decide
from release_gate.gate.evidence import Evidence, PairedData, judge
from release_gate.gate.margin import MarginTest, margin_p_value, tango_z
from release_gate.gate.rules import GateRule, TaskRule
from release_gate.schema import Outcome

CONTROLS = ["random_index@0", "random_index@1", "random_index@2"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "reports" / "test-artifacts"


# --- the superiority test of 0/1 scores: exact McNemar (the betting tests: tests/test_gate_tests.py) -------


def _flipped(rng, n, rate):
    base = rng.integers(0, 2, n).astype(float)
    other = base.copy()
    flip = rng.random(n) < rate
    other[flip] = 1 - other[flip]
    return other, base


def test_sign_flip_of_0_1_scores_is_binomtest() -> None:
    """Exact McNemar equals scipy's binomial test."""
    rng = np.random.default_rng(0)
    for _ in range(150):
        v, b = _flipped(rng, int(rng.integers(1, 300)), rng.random() * 0.3)
        wins, losses = int(((v == 1) & (b == 0)).sum()), int(((v == 0) & (b == 1)).sum())
        reference = sps.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
        assert judge(PairedData.of(v, b)).p_value(0.0) == pytest.approx(reference, abs=1e-12)


def test_three_favourable_flips_of_120_are_not_significant() -> None:
    """The issue's case: the paired t-test said 0.042, the exact answer is 0.5³ = 0.125."""
    b = np.zeros(120)
    v = b.copy()
    v[:3] = 1
    assert judge(PairedData.of(v, b)).p_value(0.0) == pytest.approx(0.125)


def test_bound_and_p_value_never_disagree() -> None:
    rng = np.random.default_rng(6)
    for _ in range(60):
        n, k = int(rng.integers(5, 160)), int(rng.choice([1, 3]))
        base = rng.integers(0, 2, n)
        v = np.where(rng.random(n) < 0.12, 1 - base, base)
        c = np.where(rng.random((n, k)) < 0.1, 1 - base[:, None], base[:, None])
        for threshold in (0.0, -0.05):
            evidence = judge(PairedData.of(v, c), threshold)
            for level in (0.05, 0.01):
                # at 0 the McNemar test decides the bound's side of 0 (the margin test's bound elsewhere)
                passes = evidence.lower(level) >= 0.0 if threshold == 0.0 and k == 1 else evidence.lower(level) > threshold
                assert passes == (evidence.p_value(threshold) <= level)


# --- the margin test: exact unconditional, Tango's ordering ---------------------------------------------


def _trinomial(n, x, y, p1, p2):
    z = n - x - y
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(gammaln(n + 1) - gammaln(x + 1) - gammaln(y + 1) - gammaln(z + 1)
                      + np.where(x > 0, x * np.log(max(p1, 1e-300)), 0) + np.where(y > 0, y * np.log(max(p2, 1e-300)), 0)
                      + np.where(z > 0, z * np.log(max(1 - p1 - p2, 1e-300)), 0))


def _tables(n):
    x, y = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = x + y <= n
    return x[keep], y[keep]


def test_tango_z_increases_with_the_wins_for_fixed_discordance() -> None:
    for n in (5, 24, 120, 300):
        for delta in (-0.3, -0.05, 0.0, 0.05):
            for d in range(n + 1):
                wins = np.arange(d + 1)
                assert np.all(np.diff(tango_z(wins, d - wins, n, delta)) >= -1e-9)


def test_margin_p_value_equals_a_brute_force_supremum() -> None:
    rng = np.random.default_rng(8)
    for _ in range(25):
        n, delta = int(rng.choice([8, 16, 40])), float(rng.choice([-0.05, -0.1, -0.2, 0.05]))
        wins, losses = int(rng.integers(0, n // 3 + 1)), int(rng.integers(0, n // 3 + 1))
        x, y = _tables(n)
        z, z_obs = tango_z(x, y, n, delta), float(tango_z(wins, losses, n, delta))
        region = z >= z_obs - 1e-9 * max(1, abs(z_obs))
        brute = max(_trinomial(n, x, y, (pi + delta) / 2, (pi - delta) / 2)[region].sum()
                    for pi in np.linspace(abs(delta), 1, 3000))
        assert margin_p_value(wins, losses, n, delta) == pytest.approx(brute, abs=1e-6)


def test_no_change_on_16_prompts_is_not_proof_of_non_inferiority() -> None:
    """The issue's demo guard: 16 unchanged prompts, 5-point budget: exact p = 0.95¹⁶ = 0.44."""
    assert MarginTest(0, 0, 16).p_value(-0.05) == pytest.approx(0.95**16)


def _rejection_region(n, margin):
    """Tables the exact test rejects at α = 5 %: per discordant count D, the wins from the smallest rejecting one
    (the p-value falls as the wins rise, so a bisection per D finds it)."""
    first = []
    for d in range(n + 1):
        low, high = 0, d + 1
        while low < high:
            mid = (low + high) // 2
            if margin_p_value(mid, d - mid, n, -margin) <= 0.05:
                high = mid
            else:
                low = mid + 1
        first.append(low)
    x, y = _tables(n)
    return x >= np.array(first)[x + y]


@pytest.mark.parametrize("n, margin", [(16, 0.05), (24, 0.05), (50, 0.1), (120, 0.05), (200, 0.05), (200, 0.1)])
def test_guard_test_size_at_the_budget_edge(n, margin) -> None:
    """Exact size (every table enumerated) at true drop = budget is ≤ α for every discordance rate;
    Tango's asymptotic test, for comparison, exceeds α somewhere in this grid."""
    x, y = _tables(n)
    ours = _rejection_region(n, margin)
    asymptotic = tango_z(x, y, n, -margin) >= sps.norm.isf(0.05)
    worst_ours = worst_asymptotic = 0.0
    for pi in np.linspace(margin, min(1.0, margin + 0.4), 41):
        mass = _trinomial(n, x, y, (pi - margin) / 2, (pi + margin) / 2)
        worst_ours = max(worst_ours, mass[ours].sum())
        worst_asymptotic = max(worst_asymptotic, mass[asymptotic].sum())
    assert worst_ours <= 0.05 + 1e-9
    print(f"n={n} budget={margin}: exact unconditional size {worst_ours:.4f}, Tango asymptotic {worst_asymptotic:.4f}")


def test_margin_bound_agrees_with_its_p_value() -> None:
    for wins, losses, n in [(0, 0, 16), (2, 10, 200), (12, 3, 120), (0, 5, 30)]:
        bound = Evidence(PairedData.of(np.zeros(n), np.zeros(n)), MarginTest(wins, losses, n)).lower(0.05)
        for threshold in (-0.1, -0.05, 0.02):
            assert (bound > threshold) == (margin_p_value(wins, losses, n, threshold) <= 0.05)


# --- sequential boundaries --------------------------------------------------------------------------------


def test_obrien_fleming_boundaries_match_gsdesign() -> None:
    """gsDesign::gsDesign(k=4, test.type=1, alpha=0.025, sfu=sfLDOF): 4.3326, 2.9631, 2.3590, 2.0141."""
    levels = boundaries.nominal_levels(0.025, (0.25, 0.5, 0.75, 1.0))
    assert [round(sps.norm.isf(p), 3) for p in levels] == [4.333, 2.963, 2.359, 2.014]
    assert boundaries.nominal_levels(0.05, (1.0,)) == (0.05,)
    assert boundaries.obf_spending(0.05, 1.0) == pytest.approx(0.05)


def test_conditional_power_under_the_current_trend() -> None:
    final = 0.05
    assert boundaries.conditional_power(0.0, 0.5, final) == pytest.approx(sps.norm.cdf(-sps.norm.isf(final) / math.sqrt(0.5)))
    assert boundaries.conditional_power(3.0, 0.5, final) > 0.9
    assert boundaries.look_sizes(120, (0.25, 0.5, 0.75, 1.0)) == (30, 60, 90, 120)


# --- every branch of the decision --------------------------------------------------------------------------


def _board(n=200, guard=None):
    base = np.zeros(n)
    guard = np.tile([1.0, 0.0], 50) if guard is None else guard
    return base, guard, {a: {"t": base, "g": guard} for a in ["baseline", *CONTROLS]}


TARGETS = [TaskRule("t", "acc,none", "target")]
GUARDS = [TaskRule("g", "acc,none", "guard", max_drop=0.05)]


def test_promote_names_the_best_passing_variant() -> None:
    base, guard, scores = _board()
    win, small = base.copy(), base.copy()
    win[:40] = 1.0
    small[:25] = 1.0
    scores["abs_select"] = {"t": win, "g": guard}
    scores["smooth_abs"] = {"t": small, "g": guard}
    d = decide(scores, TARGETS, GUARDS, GateRule(sequential=False), ["abs_select", "smooth_abs"], CONTROLS)
    assert d.outcome == "PROMOTE" and d.promoted == "abs_select"
    v = d.verdicts["abs_select"]
    assert v.reward == pytest.approx(0.2) and v.worst_guard_drop == 0.0
    assert [c.id for c in v.criteria] == ["beats_baseline", "beats_control", "guard:g"]
    assert v.criteria[0].p_value == pytest.approx(0.5**40)
    assert v.criteria[0].evidence.test.name == "exact McNemar" and v.criteria[1].evidence.test.name.startswith("betting")
    assert not v.criteria[0].anytime and v.criteria[1].anytime
    assert v.criteria[2].evidence.test.name.startswith("exact-unconditional")
    assert d.reasons[0].startswith("PROMOTE abs_select")


def test_reject_when_nothing_passes_even_on_point_estimates() -> None:
    base, guard, scores = _board()
    worse = base.copy()
    scores["abs_select"] = {"t": worse, "g": guard}
    d = decide(scores, TARGETS, GUARDS, GateRule(sequential=False), ["abs_select"], CONTROLS)
    assert d.outcome == "REJECT" and d.promoted is None
    assert d.reasons[0].startswith("REJECT")


def test_guard_collapse_rejects_naming_the_guard() -> None:
    base, guard, scores = _board(n=400, guard=np.tile([1.0, 0.0], 200))
    better = base.copy()
    better[:120] = 1.0
    collapsed = np.zeros(400)
    scores["grad_direction"] = {"t": better, "g": collapsed}
    for rule in (GateRule(sequential=False), GateRule()):
        d = decide(scores, TARGETS, GUARDS, rule, ["grad_direction"], CONTROLS)
        assert d.outcome == "REJECT"
        reason = next(r for r in d.reasons if r.startswith("grad_direction:"))
        assert "guard g" in reason and "budget" in reason
    assert d.verdicts["grad_direction"].status == "collapsed" and d.verdicts["grad_direction"].look == 0


def test_inconclusive_says_how_many_items_would_decide() -> None:
    base, guard, scores = _board()
    slightly = base.copy()
    slightly[:6] = 1.0  # 6 of 200: p = 0.016 alone, not at α/… and far from the MDE
    slightly[6] = 0.0
    scores["abs_select"] = {"t": slightly, "g": guard}
    d = decide(scores, TARGETS, GUARDS, GateRule(sequential=False, alpha=0.01), ["abs_select"], CONTROLS)
    assert d.outcome == "INCONCLUSIVE"
    assert d.items_needed and d.items_needed["t"] > 200
    assert "items of t" in d.reasons[0] and "would decide (80% power)" in d.reasons[0]


def test_the_issues_wrong_promote_is_gone() -> None:
    """Controls lose 15 of 120, the guard is flat, the variant's only evidence is 3 favourable flips."""
    n = 120
    base = (np.arange(n) % 2).astype(float)
    variant = base.copy()
    variant[[0, 2, 4]] = 1.0
    control = base.copy()
    control[1:31:2] = 0.0
    flat = np.ones(16) * 0
    scores = {"baseline": {"t": base, "g": flat}, "abs_select": {"t": variant, "g": flat},
              **{c: {"t": control, "g": flat} for c in CONTROLS}}
    guards = [TaskRule("g", "prompt_level_strict_acc,none", "guard", max_drop=0.05)]
    d = decide(scores, TARGETS, guards, GateRule(sequential=False), ["abs_select"], CONTROLS)
    assert d.outcome != "PROMOTE"
    beats = d.verdicts["abs_select"].criteria[0]
    assert beats.p_value == pytest.approx(0.125) and beats.lcb < 0
    guard = d.verdicts["abs_select"].criteria[2]
    assert guard.p_value == pytest.approx(0.95**16) and not guard.passed


def test_holm_decides_between_two_borderline_variants() -> None:
    """Both alone pass at α = 5 % (p ≈ 0.031 and 0.035); Holm needs ≤ 0.025 for the first. (Every criterion is
    exact McNemar here: ``each`` control seed alone; the seed mean's betting test needs more than 5 items.)"""
    base, guard, scores = _board()
    a, b = base.copy(), base.copy()
    a[:5] = 1.0  # 0.5⁵ = 0.031
    b[:5] = 1.0
    scores["abs_select"] = {"t": a, "g": guard}
    scores["smooth_abs"] = {"t": b, "g": guard}
    variants = ["abs_select", "smooth_abs"]
    each = {"sequential": False, "control_reference": "each"}
    assert decide(scores, TARGETS, GUARDS, GateRule(**each, holm=False), variants, CONTROLS).outcome == "PROMOTE"
    held = decide(scores, TARGETS, GUARDS, GateRule(**each), variants, CONTROLS)
    assert held.outcome == "INCONCLUSIVE"
    assert held.verdicts["abs_select"].p_adjusted == pytest.approx(2 * 0.5**5)
    assert stats.holm([0.01, 0.04, 0.03, 0.005, 0.5]) == pytest.approx(list(multipletests(
        [0.01, 0.04, 0.03, 0.005, 0.5], method="holm")[1]))


def test_lower_is_better_guard_is_oriented() -> None:
    """A guard where lower is better (an error rate): raising it is the drop the budget limits."""
    base, _, scores = _board()
    errors = np.zeros(200)
    errors[100:110] = 1.0  # a few errors everywhere: a guard without variance in baseline would be dead (SPEC §7)
    for arm in scores:
        scores[arm]["g"] = errors
    better = base.copy()
    better[:40] = 1.0
    worse_errors = errors.copy()
    worse_errors[:40] = 1.0  # 20 points more errors
    scores["abs_select"] = {"t": better, "g": worse_errors}
    guards = [TaskRule("g", "error_rate,none", "guard", max_drop=0.05, higher_is_better=False)]
    d = decide(scores, TARGETS, guards, GateRule(sequential=False), ["abs_select"], CONTROLS)
    assert d.outcome == "REJECT"
    assert d.verdicts["abs_select"].criteria[2].estimate == pytest.approx(-0.2)
    scores["abs_select"]["g"] = errors
    assert decide(scores, TARGETS, guards, GateRule(sequential=False), ["abs_select"], CONTROLS).outcome == "PROMOTE"


def test_two_weighted_targets() -> None:
    """The reward weighs the targets: +15 pts on the light target alone passes, −20 on the heavy one sinks it."""
    n = 200
    zeros, ones = np.zeros(n), np.ones(n)
    light_gain = zeros.copy()
    light_gain[:30] = 1.0
    targets = [TaskRule("t1", "acc,none", "target", weight=3.0), TaskRule("t2", "acc,none", "target", weight=1.0)]
    scores = {a: {"t1": ones, "t2": zeros} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t1": ones, "t2": light_gain}
    d = decide(scores, targets, [], GateRule(sequential=False), ["abs_select"], CONTROLS)
    beats = d.verdicts["abs_select"].criteria[0]
    assert beats.estimate == pytest.approx(0.25 * 0.15)
    # betting over the product of per-task e-processes, minimised over the null: t1 unchanged on 200 items cannot
    # rule out a −5 pt true drop there, which the reward's null can pair with +15 on t2
    assert beats.evidence.test.name.startswith("betting") and beats.p_value < 0.01
    assert d.outcome == "PROMOTE"
    heavy_loss = ones.copy()
    heavy_loss[:40] = 0.0
    scores["abs_select"] = {"t1": heavy_loss, "t2": light_gain}
    d = decide(scores, targets, [], GateRule(sequential=False), ["abs_select"], CONTROLS)
    assert d.verdicts["abs_select"].reward == pytest.approx(0.75 * -0.2 + 0.25 * 0.15)
    assert d.outcome == "REJECT"


def test_min_gain_is_a_margin_not_zero() -> None:
    """+10 pts with certainty passes min_gain 0 and 5 pts, not 15 pts."""
    base, guard, scores = _board()
    better = base.copy()
    better[:20] = 1.0
    scores["abs_select"] = {"t": better, "g": guard}
    for gain, outcome in ((0.0, "PROMOTE"), (0.05, "PROMOTE"), (0.15, "REJECT")):
        d = decide(scores, TARGETS, GUARDS, GateRule(sequential=False, min_gain=gain), ["abs_select"], CONTROLS)
        assert d.outcome == outcome, gain
        assert d.verdicts["abs_select"].criteria[0].threshold == gain
    assert d.verdicts["abs_select"].criteria[0].evidence.test.name.startswith("exact-unconditional")


def test_control_reference_each_checks_every_seed() -> None:
    """One strong seed: the seed-mean test passes, ``each`` fails on exactly that seed's arrays."""
    base, guard, scores = _board()
    variant, strong = base.copy(), base.copy()
    variant[:40] = 1.0
    strong[:40] = 1.0
    strong[40:45] = 1.0
    scores["random_index@1"] = {"t": strong, "g": guard}
    scores["abs_select"] = {"t": variant, "g": guard}
    mean = decide(scores, TARGETS, GUARDS, GateRule(sequential=False), ["abs_select"], CONTROLS)
    each = decide(scores, TARGETS, GUARDS, GateRule(sequential=False, control_reference="each"), ["abs_select"],
                  CONTROLS)
    assert mean.outcome == "PROMOTE" and each.outcome == "REJECT"
    by_id = {c.id: c for c in each.verdicts["abs_select"].criteria}
    assert set(by_id) == {"beats_baseline", "guard:g", *(f"beats_control:{c}" for c in CONTROLS)}
    assert by_id["beats_control:random_index@0"].estimate == pytest.approx(0.2)
    assert by_id["beats_control:random_index@1"].estimate == pytest.approx(-0.025)
    assert not by_id["beats_control:random_index@1"].passed_point and by_id["beats_control:random_index@2"].passed


def test_point_mode_promotes_what_statistics_call_inconclusive() -> None:
    n = 100
    base = np.tile([1.0, 0.0], n // 2)
    better = base.copy()
    better[1] = 1.0
    scores = {a: {"t": base} for a in ["baseline", *CONTROLS]}
    scores["abs_select"] = {"t": better}
    statistical = decide(scores, TARGETS, [], GateRule(), ["abs_select"], CONTROLS)
    point = decide(scores, TARGETS, [], GateRule(mode="point"), ["abs_select"], CONTROLS)
    assert statistical.outcome in ("INCONCLUSIVE", "REJECT") and statistical.promoted is None
    assert point.outcome == "PROMOTE" and point.promoted == "abs_select" and len(point.looks) == 1


def test_sequential_records_every_look_and_stops_futile_arms() -> None:
    ones, guard = np.ones(400), np.tile([1.0, 0.0], 200)
    scores = {a: {"t": ones, "g": guard} for a in ["baseline", *CONTROLS]}
    worse = ones.copy()
    worse[:100:5] = 0.0  # loses 20 of the first 100 items: no chance to pass
    scores["abs_select"] = {"t": worse, "g": guard}
    d = decide(scores, TARGETS, GUARDS, GateRule(), ["abs_select"], CONTROLS)
    assert d.verdicts["abs_select"].status == "futile" and d.verdicts["abs_select"].look == 0
    assert "conditional power" in d.verdicts["abs_select"].note
    identical = decide({**scores, "abs_select": {"t": ones, "g": guard}}, TARGETS, GUARDS, GateRule(), ["abs_select"],
                       CONTROLS)
    assert identical.verdicts["abs_select"].status == "final"  # nothing differs: no trend, no early stop
    assert len(d.looks) == 1 and d.looks[0].n == {"t": 100, "g": 100}
    assert d.evaluated["baseline"] == {"t": 100, "g": 100}
    assert d.outcome == "REJECT"


def test_budget_below_mde_warns() -> None:
    base, guard, scores = _board()
    scores["abs_select"] = {"t": base, "g": guard}
    tight = [TaskRule("g", "acc,none", "guard", max_drop=0.02)]
    d = decide(scores, TARGETS, tight, GateRule(), ["abs_select"], CONTROLS)
    assert any("guard g" in w and "minimum detectable effect" in w for w in d.warnings)


# --- the decision rule by simulation ---------------------------------------------------------------------


FIXED, SEQUENTIAL = GateRule(sequential=False), GateRule()
#: Gates per regime and mode here: enough for a rate above α to show in its Wilson interval. The full table
#: (2,000 gates in every regime of ``simulate.regimes()``) is ``benchmarks/bench_gate_size.py``'s.
GATES = 200
#: One regime per criterion binding alone, Holm, and each of the five wrong-PROMOTE paths of issue 19.
KEY_REGIMES = (
    "sparse 5% n=300, 3 variants, controls −5",
    "guard at budget edge, 8% discordant, n=200",
    "variants no better than controls, n=300",
    "3 null variants, dense n=400 (Holm binds)",
    "noisier variant (25% vs 5%), both +5, K=3 mean",
    "fraction guard, 1-pt budget edge, 16 prompts",
    "skewed [0,1] target at zero gain, n=64",
    "3 advised re-runs, 20% discordant, n=300",
    "dead guard (base and every arm 0 on it)",
    "NaN in a variant's target score",
)


def _job(args):
    scenario, rule, gates, seed = args
    return simulate.run(scenario, rule, gates, seed)


@pytest.fixture(scope="module")
def simulated():
    """The key regimes, in parallel over the machine's cores (results are seeded, so fixed)."""
    regimes = {s.name: s for s in simulate.regimes()}
    jobs = [(regimes[name], rule, GATES, 100 + i) for i, name in enumerate(KEY_REGIMES) for rule in (FIXED, SEQUENTIAL)]
    jobs += [(simulate.multiplicity_scenario(), GateRule(sequential=False, holm=False), GATES, 7)]
    jobs += [(simulate.power_scenario(2.0), rule, GATES, 9) for rule in (FIXED, SEQUENTIAL)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        tallies = list(pool.map(_job, jobs))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = [t.line() + f"   items {t.mean_items / simulate.fixed_items(t.scenario):.2f} of fixed" for t in tallies]
    (ARTIFACTS / "gate-simulation.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    return tallies


def test_false_promote_rate_is_at_most_alpha_in_every_key_regime(simulated) -> None:
    """Every null regime, fixed and sequential: the rate's 95 % Wilson lower bound is at most α (a rate
    above α by more than the simulation's error fails; today's code failed the noisier variant, the
    fraction guard, the re-runs, the dead guard and the NaN here)."""
    nulls = [t for t in simulated if t.scenario.null and t.rule.holm]
    assert len(nulls) == 2 * len(KEY_REGIMES)
    for tally in nulls:
        assert tally.gates == GATES
        assert tally.promote_interval()[0] <= 0.05, tally.line()


def test_a_dead_guard_or_a_nan_never_promotes(simulated) -> None:
    """Not a rate: no PROMOTE at all, and every gate with a NaN score is refused."""
    for tally in simulated:
        if tally.scenario.name.startswith(("dead guard", "NaN")):
            assert tally.outcomes[Outcome.PROMOTE] == 0, tally.line()
        if tally.scenario.nan:
            assert tally.outcomes[simulate.REFUSED] == tally.gates, tally.line()


def test_the_null_simulation_fails_without_holm(simulated) -> None:
    """The multiplicity scenario is built so that dropping Holm shows: three null variants near α each."""
    unadjusted = next(t for t in simulated if not t.rule.holm)
    assert unadjusted.promote_interval()[0] > 0.05, unadjusted.line()


def test_power_at_twice_the_mde(simulated) -> None:
    fixed, sequential = [t for t in simulated if not t.scenario.null]
    assert fixed.power >= 0.80, fixed.line()
    assert sequential.power >= 0.75, sequential.line()
    assert sequential.mean_items < fixed.mean_items


def test_rounding_in_the_seed_mean_is_not_an_improvement() -> None:
    """Found by the demo: a variant tied with the seed mean of three controls showed Δ = +2.5e-17, passed on
    point estimates and made the run INCONCLUSIVE with advice to score 3.9e34 items."""
    rng = np.random.default_rng(0)
    n = 381
    controls = rng.integers(0, 2, (n, 3)).astype(float)
    tied = np.zeros(n)
    tied[rng.choice(n, int(round(controls.mean(axis=1).sum())), replace=False)] = 1.0
    assert judge(PairedData.of(tied, controls, np.full(n, 1 / n), np.zeros(n))).delta > 0.0  # the rounding
    baseline = controls[:, 0].copy()
    scores = {"baseline": {"t": baseline}, **{c: {"t": controls[:, i]} for i, c in enumerate(CONTROLS)},
              "grad_direction": {"t": tied}}
    d = decide(scores, TARGETS, [], GateRule(sequential=False), ["grad_direction"], CONTROLS)
    beats_control = d.verdicts["grad_direction"].criteria[1]
    assert beats_control.id == "beats_control" and not beats_control.passed_point
    assert d.outcome == "REJECT"
