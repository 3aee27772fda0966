"""The gate's false-PROMOTE rate in every regime where a wrong PROMOTE can live, and its power (issue 19).

Every null regime of ``release_gate.gate.simulate.regimes()`` — today's sparse and dense scenarios, a
variant noisier or quieter than its controls (K = 1–3 seeds, ``mean`` and ``each``), non-0/1 guards and
targets at their edge, ``min_gain`` at its edge, weighted targets, several guards, worst-case
discordance, floor and ceiling baselines, limits smaller than the looks, 1 and 3 advised re-runs after
INCONCLUSIVE, a dead guard and a NaN score — run fixed and sequential, with the 95 % Wilson interval of
the false-PROMOTE rate; then the power at twice the planned MDE for 0/1 targets. A row whose Wilson
lower bound exceeds α is marked. Each row runs ``--gates`` gates unless a pilot of a few gates says it
would take more than ``--row-seconds``; then it runs as many as fit (never fewer than ``--min-gates``),
and the table says how many.

    python benchmarks/bench_gate_size.py [--gates 2000] [--row-seconds 240] [--label after]

writes ``benchmarks/results/gate_size_<label>.txt`` (the table) and ``.json`` (one record per row and mode).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from release_gate.gate import simulate
from release_gate.gate.rules import GateRule

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"fixed": GateRule(sequential=False), "sequential": GateRule()}
PILOT = 4
ALPHA = 0.05


def _gates(scenario: simulate.Scenario, rule: GateRule, args: argparse.Namespace) -> int:
    """The gates a row runs: ``--gates``, or as many as ``--row-seconds`` allows by a pilot's pace."""
    start = time.perf_counter()
    simulate.run(scenario, rule, PILOT, seed=999)
    per_gate = (time.perf_counter() - start) / PILOT
    return max(args.min_gates, min(args.gates, int(args.row_seconds / per_gate)))


def _row(job: tuple[int, simulate.Scenario, str, argparse.Namespace]) -> tuple[simulate.Tally, float]:
    index, scenario, mode, args = job
    rule = MODES[mode]
    gates = _gates(scenario, rule, args)
    start = time.perf_counter()
    tally = simulate.run(scenario, rule, gates, seed=1000 + index)
    return tally, time.perf_counter() - start


def _cell(tally: simulate.Tally) -> str:
    if not tally.scenario.null:
        return f"{100 * tally.power:5.1f}% ({tally.gates})"
    low, high = tally.promote_interval()
    flag = " ←" if low > ALPHA else ""
    return f"{100 * tally.promote_rate:5.2f}% [{100 * low:.2f}–{100 * high:.2f}] ({tally.gates}){flag}"


def _shares(tally: simulate.Tally) -> str:
    return " ".join(f"{str(k)[:3]} {100 * v / tally.gates:.0f}%" for k, v in sorted(tally.outcomes.items(), key=str))


def _record(tally: simulate.Tally, seconds: float) -> dict:
    low, high = tally.promote_interval()
    return {"regime": tally.scenario.name, "mode": tally.mode, "null": tally.scenario.null, "gates": tally.gates,
            "promote_rate": tally.promote_rate, "wilson": [low, high], "power": tally.power,
            "outcomes": {str(k): v for k, v in tally.outcomes.items()}, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=int, default=2000)
    parser.add_argument("--min-gates", type=int, default=200)
    parser.add_argument("--row-seconds", type=float, default=240.0)
    parser.add_argument("--label", default="after")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="run only the regimes whose name contains this text")
    args = parser.parse_args()
    scenarios = [s for s in (*simulate.regimes(), *simulate.power_scenarios())
                 if not args.only or args.only in s.name]
    jobs = [(i, s, mode, args) for i, s in enumerate(scenarios) for mode in MODES]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_row, jobs))
    lines = [f"gate size by simulation ({args.label}): false PROMOTE, 95% Wilson interval, (gates); "
             f"power rows: share promoting the fit variant; ← Wilson lower bound above α = {ALPHA}",
             f"{'regime':<50} {'fixed':<34} {'sequential':<34} outcomes fixed | sequential"]
    for (fixed, _), (sequential, _) in zip(results[::2], results[1::2]):
        lines.append(f"{fixed.scenario.name:<50} {_cell(fixed):<34} {_cell(sequential):<34} "
                     f"{_shares(fixed)} | {_shares(sequential)}")
    cpu = sum(seconds for _, seconds in results)
    lines.append(f"{len(results)} rows in {time.perf_counter() - start:.0f} s wall, {cpu:.0f} s of gates "
                 f"({args.workers} workers)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gate_size_{args.label}.txt").write_text(text)
    records = [_record(tally, seconds) for tally, seconds in results]
    (RESULTS / f"gate_size_{args.label}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
