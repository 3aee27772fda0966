"""Peak memory of two identical `release-gate run` processes on one cache vs one run alone (issue 21).

The second of two runs that share a cache waits on the item store's locks while the first scores; it
should then find every item stored and start no engine of its own. Each case gets a fresh cache (the
offline assets linked in), so both the solo run and the pair score from scratch. Memory is the summed
PSS (proportional set size: shared pages split between the processes that map them) of every process
of the run(s), sampled every 0.25 s; the pair's peak should stay within 1.3 × the solo run's.

    heavy python benchmarks/bench_concurrent.py [--limit 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from release_gate.assets import fetch  # noqa: E402
from release_gate.embedded_demo import csqa_prompt  # noqa: E402
from release_gate.files import read_jsonl  # noqa: E402

from factories import smollm2_adapter, write_heldout_task  # noqa: E402

ENGINE_STARTED = "starting the vLLM engine"


def tree_pss(process: psutil.Process) -> int:
    """Bytes of PSS of ``process`` and all its descendants (RSS where PSS cannot be read)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            info = member.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            continue
    return total


def run_together(configs: list[Path], logs: list[Path]) -> int:
    """Start one run per config at once; the peak of their summed memory, once all have exited."""
    processes = []
    for config, log in zip(configs, logs):
        with open(log, "w") as handle:
            processes.append(subprocess.Popen([sys.executable, "-m", "release_gate.cli", "-v", "run", str(config),
                                               "--exit-zero"], stdout=handle, stderr=subprocess.STDOUT,
                                              env={**os.environ, "TQDM_DISABLE": "1"}))
    handles = [psutil.Process(p.pid) for p in processes]
    peak = 0
    while any(p.poll() is None for p in processes):
        peak = max(peak, sum(tree_pss(h) for h in handles))
        time.sleep(0.25)
    for process, log in zip(processes, logs):
        if process.returncode != 0:
            raise SystemExit(f"run failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return peak


def case(root: Path, name: str, runs: int, inputs: dict) -> tuple[int, list[bool]]:
    """``runs`` identical runs on a fresh cache: peak memory, and whether each started an engine."""
    assets = inputs["assets"]
    cache = root / name / "cache"
    cache.mkdir(parents=True)
    for entry in ("models", "data", "nltk_data", "downloads", "manifest.json"):
        (cache / entry).symlink_to(assets.root / entry)
    configs, logs = [], []
    for index in range(runs):
        config = {
            "base_model": str(assets.model_dir), "adapter": str(inputs["adapter"]),
            "output": {"dir": str(root / name / f"run{index}")}, "cache_dir": str(cache),
            "calibration": {"file": str(inputs["calibration"]), "n": 24},
            "policies": ["abs_select"], "controls": {"seeds": [0]},
            "evaluation": {"include_path": [str(inputs["tasks"])], "max_model_len": 1024},
            "targets": [{"task": "commonsense_qa_heldout", "metric": "acc", "limit": inputs["limit"]}],
            "gate": {"sequential": False},
        }
        configs.append(root / name / f"config{index}.yaml")
        configs[-1].write_text(yaml.safe_dump(config))
        logs.append(root / name / f"run{index}.log")
    peak = run_together(configs, logs)
    return peak, [ENGINE_STARTED in log.read_text() for log in logs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="items of the target task")
    args = parser.parse_args()
    assets = fetch()
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        root = Path(tmp)
        rows = read_jsonl(assets.commonsense_qa)
        calibration = root / "calibration.jsonl"
        calibration.write_text("".join(json.dumps(dict(zip(("prompt", "answer"), csqa_prompt(rows[i])))) + "\n"
                                       for i in range(512, 536)))
        inputs = {"assets": assets, "calibration": calibration, "limit": args.limit,
                  "tasks": write_heldout_task(rows, range(640, 640 + max(args.limit, 8)), root / "tasks"),
                  "adapter": smollm2_adapter(assets.model_dir, root / "adapter", seed=11)}
        solo, solo_engines = case(root, "solo", 1, inputs)
        pair, pair_engines = case(root, "pair", 2, inputs)
    gib = 1024 ** 3
    print(f"solo run: peak {solo / gib:.2f} GiB (engine started: {solo_engines[0]})")
    print(f"two runs on one cache: peak {pair / gib:.2f} GiB (engines started: {pair_engines})")
    print(f"pair / solo = {pair / solo:.2f} (issue 21 asks ≤ 1.3)")


if __name__ == "__main__":
    main()
