"""The gate's looks across runs (issue 19, paths 3–5): re-runs continue the error spending, a dead guard
is never passed, a non-finite score is refused, and the INCONCLUSIVE advice is true and readable.

The re-run regime is simulated with the product's own advice (limits raised to the items it names,
capped by what the task has; the same items continued); the ledger is exercised on disk.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from release_gate.errors import BadInput
from release_gate.evaluation.engine import Arm
from release_gate.evaluation.runner import ResolvedTask, TaskRequest
from release_gate.gate import boundaries, stats
from release_gate.gate.advice import items_needed
from release_gate.gate.decide import decide, gate_outcome, run_gate
from release_gate.gate.looks import Design
from release_gate.gate.rules import GateRule, TaskRule
from release_gate.ledger import Ledger, gate_key

TARGET = (TaskRule("t", "acc", "target"),)
GUARD = (TaskRule("g", "acc", "guard", max_drop=0.05),)
CONTROL = ("random_index@0",)


def _fetch(scores):
    def fetch(request):
        return {arm: {t: np.asarray(scores[arm][t])[:n] for t, n in sizes.items()} for arm, sizes in request.items()}
    return fetch


def _null_gate_scores(rng: np.random.Generator, n: int, discordance: float = 0.2) -> dict:
    """A variant with no true gain (answers flipped both ways at rate π); a control far below baseline,
    so criterion 1 (beats baseline) binds alone."""
    baseline = (rng.random(n) < 0.5).astype(float)
    variant = baseline.copy()
    flip = rng.random(n) < discordance
    variant[flip] = 1 - variant[flip]
    control = baseline.copy()
    control[rng.random(n) < 0.5] = 0.0
    return {"baseline": {"t": baseline}, "v": {"t": variant}, CONTROL[0]: {"t": control}}


def _advised_reruns(scores: dict, rule: GateRule, limit: int, available: int, reruns: int, continue_looks: bool):
    """Run a gate, then re-run it after INCONCLUSIVE as the advice says, ``reruns`` times at most."""
    design = Design(rule, TARGET, (), {"t": limit}, ("v",), CONTROL, with_base=False, available={"t": available})
    for attempt in range(reruns + 1):
        decision = gate_outcome(design, _fetch(scores))
        if decision.outcome != "INCONCLUSIVE" or attempt == reruns:
            return decision
        needed = items_needed(decision.verdicts, design) or {}
        raised = {"t": min(max(limit, needed.get("t", limit)), available)}
        if raised["t"] <= design.limits["t"]:
            return decision
        history = decision.history if continue_looks else ()
        design = replace(design, limits=raised, history=history)
    return decision


# --- path 5: non-finite scores ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_score_is_refused_naming_arm_task_and_item(bad) -> None:
    """A NaN used to make the Monte-Carlo null all-NaN (p = 1/20001): PROMOTE. Now decide() and run_gate refuse."""
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    better = np.maximum(base, (rng.random(200) < 0.3).astype(float))
    better[7] = bad
    scores = {"baseline": {"t": base}, "v": {"t": better}, "random_index@0": {"t": base.copy()},
              "random_index@1": {"t": base.copy()}}
    with pytest.raises(ValueError, match=r"arm v, task t, item 7: score (nan|inf) is not finite"):
        decide(scores, TARGET, (), GateRule(sequential=False), ["v"], ["random_index@0", "random_index@1"])
    design = Design(GateRule(), TARGET, (), {"t": 200}, ("v",), ("random_index@0", "random_index@1"), with_base=False)
    with pytest.raises(ValueError, match="arm v, task t, item 7"):
        run_gate(design, _fetch(scores))


# --- path 4: a dead guard --------------------------------------------------------------------------------


def _dead_guard_scores(with_base: bool, guard_value: float = 0.0) -> dict:
    rng = np.random.default_rng(1)
    base = (rng.random(200) < 0.5).astype(float)
    better = np.maximum(base, (rng.random(200) < 0.5).astype(float))  # +25 pts: passes everything else
    guard = np.full(64, guard_value)
    scores = {"baseline": {"t": base, "g": guard}, "v": {"t": better, "g": guard.copy()},
              CONTROL[0]: {"t": base.copy(), "g": guard.copy()}}
    if with_base:
        scores["base"] = {"t": base.copy(), "g": guard.copy()}
    return scores


@pytest.mark.parametrize("sequential", [False, True])
def test_a_dead_guard_is_never_passed(sequential: bool) -> None:
    """Every arm, base included, scores 0 on every guard item: the gate used to PROMOTE. Now INCONCLUSIVE,
    the first reason naming the guard and why, and no warning says the opposite."""
    design = Design(GateRule(sequential=sequential), TARGET, GUARD, {"t": 200, "g": 64}, ("v",), CONTROL)
    d = run_gate(design, _fetch(_dead_guard_scores(True)))
    assert d.outcome == "INCONCLUSIVE" and d.promoted is None
    assert d.reasons[0] == ("INCONCLUSIVE: guard g: base and baseline score 0 on all 64 items, so it cannot show a "
                            "drop; no variant can be promoted on it — use items the models can pass and fail")
    assert not any("rarely pass" in w or "budget" in w for w in d.warnings)
    assert "items would decide" not in d.reasons[0]


def test_a_dead_guard_without_a_base_arm_and_at_the_ceiling() -> None:
    design = Design(GateRule(sequential=False), TARGET, GUARD, {"t": 200, "g": 64}, ("v",), CONTROL, with_base=False)
    d = run_gate(design, _fetch(_dead_guard_scores(False, 1.0)))
    assert d.outcome == "INCONCLUSIVE"
    assert d.reasons[0].startswith("INCONCLUSIVE: guard g: baseline scores 1 on all 64 items, so it cannot show")


def test_a_dead_guard_rejects_in_point_mode() -> None:
    """``mode: point`` knows only PROMOTE and REJECT: the dead guard still blocks, and the reason names it."""
    design = Design(GateRule(mode="point"), TARGET, GUARD, {"t": 200, "g": 64}, ("v",), CONTROL)
    d = run_gate(design, _fetch(_dead_guard_scores(True)))
    assert d.outcome == "REJECT" and d.reasons[0].startswith("REJECT: guard g: base and baseline score 0")


def test_a_live_guard_is_passed() -> None:
    """One item base and baseline can fail brings the guard to life: the same variant is promoted."""
    scores = _dead_guard_scores(True)
    for arm in scores:
        scores[arm]["g"] = scores[arm]["g"].copy()
        scores[arm]["g"][0] = 1.0
    d = decide(scores, TARGET, GUARD, GateRule(sequential=False), ["v"], CONTROL)
    assert d.outcome == "PROMOTE"


def test_the_budget_warning_does_not_contradict_a_promote() -> None:
    from release_gate.gate.words import budget_warnings

    warning = budget_warnings(GUARD, {"g": 16}, 0.05)[0]
    assert "rarely pass" not in warning and "only if the variant changes few" in warning


# --- path 3: re-runs ---------------------------------------------------------------------------------------


def test_a_rerun_continues_the_spending_of_the_looks_before_it() -> None:
    rule = GateRule()
    first = Design(rule, TARGET, (), {"t": 400}, ("v",), CONTROL, with_base=False)
    assert first.times == (0.25, 0.5, 0.75, 1.0)
    assert first.nominal(3, 0.05) == pytest.approx(boundaries.nominal_levels(0.05, first.times, 0.2)[3])
    history = first.looks_made(4)
    again = replace(first, limits={"t": 1200}, history=history)
    # planned 300, 600, 900, 1200: 300 adds nothing to the 400 already tested, the rest continue at t = n / 400
    assert [sizes["t"] for sizes, _ in again.schedule] == [600, 900, 1200]
    assert again.times == pytest.approx((0.25, 0.5, 0.75, 1.0, 1.5, 2.25, 3.0))
    levels = boundaries.nominal_levels(0.05, again.times, 0.2)
    assert [again.nominal(k, 0.05) for k in range(3)] == pytest.approx(levels[4:])
    assert levels[:4] == pytest.approx([h.level for h in history])  # the first run's levels are unchanged
    assert max(levels[4:]) < 0.05 * 0.2 * 2  # re-runs live on the reserve, not on a fresh α
    assert boundaries.spent(0.05, 0.2, 1e9) == pytest.approx(0.05)  # and never spend more than α in all
    with pytest.raises(ValueError, match="no look adds items"):
        replace(first, limits={"t": 300}, history=history)


def test_uneven_raises_advance_time_by_the_largest_growth() -> None:
    """Only one of two tasks grows: the look's time grows by that task's factor (conservative for the other)."""
    assert boundaries.continued_times(({"a": 100, "b": 100}, 1.0), [{"a": 100, "b": 300}]) == [3.0]


def test_limits_smaller_than_the_looks_do_not_retest_the_same_items() -> None:
    """3 items, 4 looks: the planned sizes 1, 2, 3, 3 become three looks, the last at t = 1."""
    design = Design(GateRule(), TARGET, (), {"t": 3}, ("v",), CONTROL, with_base=False)
    assert [(sizes["t"], t) for sizes, t in design.schedule] == [(1, 0.25), (2, 0.5), (3, 1.0)]


def test_the_spending_holds_across_runs_for_a_brownian_statistic() -> None:
    """The crossing probability of the canonical statistic over a first run and three re-runs is what was spent."""
    times = (0.25, 0.5, 0.75, 1.0, 1.6, 2.4, 3.2, 8.0)
    levels = np.asarray(boundaries.nominal_levels(0.05, times, 0.2))
    rng = np.random.default_rng(3)
    draws = 400_000
    paths = np.cumsum(rng.normal(size=(draws, len(times))) * np.sqrt(np.diff((0.0, *times))), axis=1)
    crossed = (paths / np.sqrt(times) >= sps.norm.isf(levels)).any(axis=1).mean()
    assert crossed == pytest.approx(boundaries.spent(0.05, 0.2, times[-1]), abs=0.0015)


def _false_promotes(rule: GateRule, gates: int, reruns: int, continued: bool) -> int:
    rng = np.random.default_rng(11)
    return sum(_advised_reruns(_null_gate_scores(rng, 2000), rule, 200, 2000, reruns, continued).outcome == "PROMOTE"
               for _ in range(gates))


def test_advised_reruns_keep_false_promote_below_alpha() -> None:
    """A null variant (π = 0.2, n = 200 of 2,000) re-run three times as advised. Before the ledger every run
    spent a fresh α: 7.05 % [6.01–8.26] of 2,000 gates promoted (benchmarked on the old code); continuing the
    spending keeps it ≤ α. The same loop with the history dropped shows the reset is what inflates."""
    rule = GateRule(sequential=False)
    gates = 600
    kept = _false_promotes(rule, gates, 3, continued=True)
    reset = _false_promotes(rule, gates, 3, continued=False)
    low, _ = stats.wilson(kept, gates)
    assert low <= 0.05 and kept / gates <= 0.05
    assert reset > kept


def test_sequential_reruns_keep_false_promote_below_alpha() -> None:
    gates = 200
    kept = _false_promotes(GateRule(), gates, 1, continued=True)
    assert stats.wilson(kept, gates)[0] <= 0.05


# --- the ledger on disk ------------------------------------------------------------------------------------


def _ledger_parts(seed: int = 0):
    arms = [Arm("base"), Arm("baseline", Path("/a"), "a" * 64), Arm("v", Path("/v"), "b" * 64),
            Arm(CONTROL[0], Path("/c"), "c" * 64)]
    tasks = [ResolvedTask(TaskRequest("t", "acc"), None, "taskkey", "acc,none", sample_seed=seed)]
    return arms, tasks


def _open(root: Path, design: Design, seed: int = 0) -> Ledger:
    arms, tasks = _ledger_parts(seed)
    return Ledger.open(root, gate_key(arms, tasks, "engine"), design, {t.request.name: t.sample_seed for t in tasks})


def test_a_second_run_sees_the_first_runs_looks_from_the_ledger(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    scores = _null_gate_scores(rng, 2000)
    first = Design(GateRule(), TARGET, (), {"t": 200}, ("v",), CONTROL, with_base=False)
    ledger = _open(tmp_path, first)
    assert ledger.runs == [] and ledger.design(first) == first
    one = gate_outcome(ledger.design(first), _fetch(scores))
    history = ledger.record(one, "/runs/one", "2026-12-03T18:00:00Z")
    assert [h.look for h in history] == list(range(1, len(one.looks) + 1))
    assert {h.run for h in history} == {"/runs/one"}

    raised = replace(first, limits={"t": 800})
    ledger = _open(tmp_path, raised)  # a later process: reads the file
    assert ledger.begun == "2026-12-03T18:00:00Z" and ledger.replaying is None
    continued = ledger.design(raised)
    assert [(h.n, h.t) for h in continued.history] == [(h.n, h.t) for h in one.history]
    assert continued.times[len(one.looks)] > one.history[-1].t
    two = gate_outcome(continued, _fetch(scores))
    history = ledger.record(two, "/runs/one", "2026-12-03T19:00:00Z")
    assert len(history) == len(one.looks) + len(two.looks)
    assert two.looks[0].look == len(one.looks) + 1
    document = json.loads(ledger.path.read_text())
    assert [r["limits"] for r in document["runs"]] == [{"t": 200}, {"t": 800}]

    replay = _open(tmp_path, first)  # the first run's limits again: its decision, from its own history
    assert replay.replaying == 0 and replay.design(first).history == ()
    assert gate_outcome(replay.design(first), _fetch(scores)).outcome == one.outcome
    replay.record(one, "/runs/one", "2026-12-03T20:00:00Z")
    assert len(json.loads(ledger.path.read_text())["runs"]) == 2  # a replay records nothing new

    fewer = replace(first, limits={"t": 50})  # every look within the items already tested
    with pytest.raises(BadInput, match="no look adds items"):
        _open(tmp_path, fewer).design(fewer)


def test_another_sample_order_or_alpha_on_a_recorded_gate_is_refused(tmp_path: Path) -> None:
    design = Design(GateRule(sequential=False), TARGET, (), {"t": 100}, ("v",), CONTROL, with_base=False)
    scores = _null_gate_scores(np.random.default_rng(6), 100)
    ledger = _open(tmp_path, design)
    ledger.record(gate_outcome(design, _fetch(scores)), "/runs/one", "2026-12-03T18:00:00Z")
    with pytest.raises(BadInput, match=r"look ledger .*ledgers/.*\.json: .*evaluation.sample_seed"):
        _open(tmp_path, replace(design, limits={"t": 200}), seed=1)
    with pytest.raises(BadInput, match="gate.alpha"):
        _open(tmp_path, replace(design, rule=GateRule(sequential=False, alpha=0.1)))
    with pytest.raises(BadInput, match="gate.rerun_reserve"):
        _open(tmp_path, replace(design, rule=GateRule(sequential=False, rerun_reserve=0.1)))


# --- the advice ------------------------------------------------------------------------------------------------


def _inconclusive(available: int, rule: GateRule | None = None):
    rng = np.random.default_rng(8)
    base = (rng.random(300) < 0.5).astype(float)
    variant = base.copy()
    wrong = np.flatnonzero(base == 0)
    variant[wrong[:9]] = 1.0  # +9 of 300, 3 back: +2 pts, p ≈ 0.07
    variant[np.flatnonzero(base == 1)[:3]] = 0.0
    control = base.copy()
    control[np.flatnonzero(base == 1)[3:60]] = 0.0
    scores = {"baseline": {"t": base}, "v": {"t": variant}, CONTROL[0]: {"t": control}}
    design = Design(rule or GateRule(sequential=False), TARGET, (), {"t": 300}, ("v",), CONTROL, with_base=False,
                    available={"t": available})
    return design, run_gate(design, _fetch(scores))


def test_the_advice_names_items_a_person_can_act_on_and_the_rerun_gets_that_power() -> None:
    design, d = _inconclusive(available=100_000)
    assert d.outcome == "INCONCLUSIVE"
    needed = d.items_needed["t"]
    shown = f"{-(-needed // 10 ** (len(str(needed)) - 3)) * 10 ** (len(str(needed)) - 3):,}"
    assert (f"; at the observed effect about {shown} items of t would decide (80% power); raise its limit to {shown} "
            "and re-run with --resume: only the new items are scored and the gate continues from look 2, spending "
            "the α it kept for re-runs") in d.reasons[0]
    assert "(" + "more than" not in d.reasons[0]
    # true under the new spending: at the level the re-run actually gets, those items give ≥ 80 % power
    rerun = replace(design, limits={"t": needed}, history=d.history)
    level = rerun.nominal(rerun.n_looks - 1, 0.05)
    criterion = d.verdicts["v"].criteria[0]
    assert level < 0.04  # below the first run's own level: the re-run spends the reserve
    assert needed >= 0.97 * stats.items_for_power(criterion.estimate, criterion.evidence.se, 300, level)


def test_the_advice_says_when_the_task_is_too_small() -> None:
    _, d = _inconclusive(available=381)
    assert d.outcome == "INCONCLUSIVE"
    assert "would be needed; the task has only 381, so this effect is too small to show with it" in d.reasons[0]
    assert "raise" not in d.reasons[0]


def test_no_reserve_means_a_rerun_cannot_promote_and_the_advice_says_so() -> None:
    _, d = _inconclusive(available=100_000, rule=GateRule(sequential=False, rerun_reserve=0.0))
    assert d.outcome == "INCONCLUSIVE" and d.items_needed is None
    assert "gate.rerun_reserve is 0, so this gate kept no α for re-runs" in d.reasons[0]


def test_the_report_says_which_look_of_the_gate_this_is(tmp_path: Path) -> None:
    """A re-run's report names the gate's history: "look 7 of a gate begun on 2026-12-03 …"."""
    import shutil

    from release_gate.reporting import render_report

    run = Path(shutil.copytree(Path(__file__).parent / "fixtures" / "run", tmp_path / "run"))
    document = json.loads((run / "decision.json").read_text(encoding="utf-8"))
    earlier = [{"look": k + 1, "run": "/runs/a", "date": "2026-12-03T18:00:00Z", "n": {"t": 50 * (k + 1)},
                "t": 0.25 * (k + 1), "nominal_level": 0.01} for k in range(4)]
    mine = [{"look": k + 5, "run": "/runs/a", "date": "2026-12-04T09:00:00Z", "n": {"t": 300 + 100 * k},
             "t": 1.5 + 0.5 * k, "nominal_level": 0.005} for k in range(3)]
    document["history"] = earlier + mine
    document["design"] = {**document["design"], "first_look": 5, "items": {"t": [300, 400, 500]}}
    (run / "decision.json").write_text(json.dumps(document), encoding="utf-8")
    html = render_report(run).read_text(encoding="utf-8")
    assert ("look 7 of a gate begun on 2026-12-03: 1 earlier run made looks 1–4 on the same items, and this run "
            "continues their error spending") in html
    assert "continuing the gate's looks from look 5: t 300, 400, 500 items" in html
