"""Evaluate several arms into an item store on one engine; the interrupt tests kill this mid-run.

Run by tests/test_interrupt.py as a subprocess in its own process group, so
the test can send Ctrl-C / kill -9 and then look for engine processes left
behind. vLLM spawns worker processes, so the engine starts under an
``if __name__ == "__main__":`` guard.
    python interrupted_run.py STORE_DIR TASK_DIR NAME=ADAPTER_DIR ...
    python interrupted_run.py --chunks RUN_LOG STORE_DIR TASK_DIR NAME=ADAPTER_DIR ...

``--chunks`` runs the product's own path instead: a fixed-design look of every arm on a task of
several chunks through an :class:`EvaluationSession` (cross-arm batching), inside a run log, with
release-gate's debug lines (one per chunk begun) on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from release_gate.assets import Assets, fetch
from release_gate.evaluation.engine import Arm, EngineSettings
from release_gate.evaluation.runner import ResolvedTask, TaskRequest, resolve_task
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks

#: Small enough for a test; IFEval generation keeps a signal from landing after the last pair.
REQUESTS = (TaskRequest("commonsense_qa", "acc", limit=12),
            TaskRequest("ifeval", "prompt_level_loose_acc", limit=3, max_gen_toks=48))
#: Three chunks (64, 64, 2) of one task: a kill lands inside the evaluation.
CHUNKED = (TaskRequest("commonsense_qa", "acc", limit=130),)


def arms_from(named: Sequence[str]) -> list[Arm]:
    """The base model plus one arm per ``NAME=ADAPTER_DIR``."""
    return [Arm.base(), *(Arm.from_adapter(*arm.split("=", 1)) for arm in named)]


def settings(assets: Assets, arms: Sequence[Arm]) -> EngineSettings:
    return EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=1024)


def resolve(assets: Assets, task_dir: Path, requests: Sequence[TaskRequest] = REQUESTS) -> list[ResolvedTask]:
    """The tasks exactly as the run resolves them: the test derives store paths."""
    prepare_environment(assets)
    manager = task_manager([write_offline_tasks(assets, task_dir)])
    return [resolve_task(request, manager) for request in requests]


def chunked(run_log_path: str, store_dir: str, task_dir: str, *named: str) -> None:
    """One look at every item of :data:`CHUNKED` for every arm, as ``release-gate run`` evaluates."""
    import logging

    from release_gate.evaluation.in_process import VllmBackend
    from release_gate.evaluation.session import EvaluationSession
    from release_gate.evaluation.store import ItemStore
    from release_gate.runlog import run_log

    logger = logging.getLogger("release_gate")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    assets = fetch()
    arms = arms_from(named)
    tasks = resolve(assets, Path(task_dir), CHUNKED)
    with run_log(Path(run_log_path)), EvaluationSession(arms, tasks, ItemStore(Path(store_dir)),
                                                        VllmBackend(settings(assets, arms))) as session:
        session.fetch({arm.name: {t.request.name: t.size for t in tasks} for arm in arms})


def main() -> None:
    from release_gate.evaluation.backend import SharedEngineLM
    from release_gate.evaluation.engine import Engine
    from release_gate.evaluation.in_process import VllmBackend
    from release_gate.evaluation.scoring import evaluate
    from release_gate.evaluation.store import ItemStore

    store_dir, task_dir, *named = sys.argv[1:]
    assets = fetch()
    arms = arms_from(named)
    tasks = resolve(assets, Path(task_dir))
    with Engine(settings(assets, arms)) as engine:
        print("engine started", flush=True)
        evaluate(VllmBackend.around(SharedEngineLM(engine, arms[0]), cross_arm=False), arms, tasks, ItemStore(Path(store_dir)))
    print("done", flush=True)


if __name__ == "__main__":
    chunked(*sys.argv[2:]) if sys.argv[1] == "--chunks" else main()
