"""Evaluate every arm on every task through one shared engine, resuming from the store.

lm-eval builds requests and scores items; the runner asks it for one
(arm, task) at a time so each finished pair is stored at once, and answers
pairs already in the store without touching the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from ..errors import BadInput
from ..hashing import content_key
from .backend import SharedEngineLM
from .engine import Arm
from .store import Item, ItemStore
from .tasks import CODE_TASKS


@dataclass(frozen=True)
class TaskRequest:
    """One task to score: lm-eval name, the metric the gate reads, and run limits.

    ``metric`` may name a filter (``exact_match,strict-match``); a bare name is
    accepted when the task has a single filter.
    """

    name: str
    metric: str
    limit: int | None = None
    num_fewshot: int | None = None
    max_gen_toks: int | None = None

    def gen_kwargs(self) -> str | None:
        return None if self.max_gen_toks is None else f"max_gen_toks={self.max_gen_toks}"


@dataclass(frozen=True)
class ResolvedTask:
    """A task lm-eval has loaded: its content key and the metric key to read."""

    request: TaskRequest
    task: Any
    key: str
    metric_key: str


def resolve_task(request: TaskRequest, manager: Any) -> ResolvedTask:
    """Load ``request.name`` from the task manager and check the metric it must produce."""
    from lm_eval.tasks import get_task_dict

    try:
        task = get_task_dict([request.name], manager)[request.name]
    except (KeyError, ValueError) as exc:
        if request.name in CODE_TASKS:
            raise BadInput(f"task {request.name!r} executes model-written code: it runs only with "
                           "allow_code_execution: true") from None
        raise BadInput(f"unknown task {request.name!r} ({exc})") from None
    config = task.config
    metrics = [m["metric"] for m in (config.metric_list or [])]
    filters = [f["name"] for f in (config.filter_list or [])] or ["none"]
    metric_key = _metric_key(request, metrics, filters)
    payload = {
        "config": config.to_dict() if hasattr(config, "to_dict") else repr(config),
        "limit": request.limit, "num_fewshot": request.num_fewshot, "max_gen_toks": request.max_gen_toks,
        "lm_eval": metadata.version("lm_eval"),
    }
    return ResolvedTask(request, task, content_key(payload), metric_key)


def _metric_key(request: TaskRequest, metrics: list[str], filters: list[str]) -> str:
    name, _, filter_name = request.metric.partition(",")
    known = [f"{m},{f}" for f in filters for m in metrics]
    if name not in metrics:
        raise BadInput(f"task {request.name!r} does not produce metric {name!r} (it produces: {', '.join(known)})")
    if filter_name:
        if filter_name not in filters:
            raise BadInput(f"task {request.name!r} has no filter {filter_name!r} (it produces: {', '.join(known)})")
        return request.metric
    if len(filters) > 1:
        raise BadInput(f"task {request.name!r} metric {name!r} is ambiguous: name one of {', '.join(known)}")
    return f"{name},{filters[0]}"


def items_from_samples(samples: Sequence[dict[str, Any]]) -> list[Item]:
    """Per-item scalar metrics (keyed ``metric,filter``) from lm-eval's logged samples."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in samples:
        entry = by_doc.setdefault(int(sample["doc_id"]), {
            "metrics": {}, "target": str(sample.get("target", "")),
            "response": _first_text(sample.get("filtered_resps")), "prompt": _prompt(sample),
        })
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                entry["metrics"][f"{metric},{sample.get('filter', 'none')}"] = float(value)
    return [Item(doc_id=doc, **entry) for doc, entry in sorted(by_doc.items())]


def _first_text(value: Any) -> str:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return str(value) if value is not None else ""


def _prompt(sample: dict[str, Any]) -> str:
    arguments = sample.get("arguments") or [[""]]
    first = arguments[0]
    return str(first[0] if isinstance(first, (list, tuple)) else first)


def evaluate_arm_task(lm: SharedEngineLM, arm: Arm, resolved: ResolvedTask, manager: Any) -> list[Item]:
    """Run lm-eval for one (arm, task) on the shared engine."""
    from lm_eval import simple_evaluate

    request = resolved.request
    result = simple_evaluate(
        model=lm.for_arm(arm), tasks=[request.name], task_manager=manager, limit=request.limit,
        num_fewshot=request.num_fewshot, gen_kwargs=request.gen_kwargs(), log_samples=True,
        bootstrap_iters=0, verbosity="WARNING",
    )
    return items_from_samples(result["samples"][request.name])


def evaluate(
    lm: SharedEngineLM, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], manager: Any, store: ItemStore,
    cross_arm: bool = True,
) -> dict[tuple[str, str], list[Item]]:
    """Scores for every (arm, task), from the store where present; returns items by (arm, task).

    With ``cross_arm`` the arms still missing for a task share engine calls
    (one ``generate`` with a per-prompt LoRA list); each (arm, task) is still
    stored as soon as it is scored.
    """
    from tqdm.auto import tqdm

    engine_key = lm.engine.settings.key()
    out: dict[tuple[str, str], list[Item]] = {}
    with tqdm(total=len(arms) * len(tasks), desc="evaluation", unit="arm×task") as bar:
        for task in tasks:
            name = task.request.name
            pending = []
            for arm in arms:
                items = store.load(arm, name, task.key, engine_key)
                if items is None:
                    pending.append(arm)
                else:
                    out[(arm.name, name)] = items
                    bar.update()
            shared = lm.batched_with(tuple(pending)) if cross_arm and len(pending) > 1 else lm
            for arm in pending:
                bar.set_postfix_str(f"{arm.name} / {name}")
                items = evaluate_arm_task(shared, arm, task, manager)
                store.save(arm, name, task.key, engine_key, items)
                out[(arm.name, name)] = items
                bar.update()
    return out
