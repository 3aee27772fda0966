"""Scores on demand, one look at a time: from the store when present, else from the backend.

The gate asks for "these arms on the first n items of every task"; the session answers from the item
store and has the backend (:mod:`.protocol`: the in-process engine, servers, or a third party's)
evaluate only what is missing. The backend starts on the first request that needs it (a run whose
every item is stored starts none) and runs the probe canary once; the per-item canary runs on the
first answer that holds both base and baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReleaseGateError, RuntimeFailure
from ..files import content_key, read_json, write_json_atomic
from ..schema import BASE, BASELINE
from .engine import Arm
from .progress import Progress
from .protocol import EvaluationBackend
from .runner import BuiltTask, ResolvedTask, stored_items
from .scoring import evaluate
from .store import Item, ItemStore

logger = logging.getLogger(__name__)


class EvaluationSession:
    """Per-item scores for the gate's looks; use as a context manager (the backend is closed on exit)."""

    def __init__(self, arms: Sequence[Arm], tasks: Sequence[ResolvedTask], store: ItemStore,
                 backend: EvaluationBackend) -> None:
        self.arms = {a.name: a for a in arms}
        self.tasks = {t.request.name: t for t in tasks}
        self.store, self.backend = store, backend
        self.items: dict[tuple[str, str], list[Item]] = {}
        self.canary: dict[str, Any] = {}
        self._started = False
        self._checked = False
        self._progress: Progress | None = None

    def __enter__(self) -> EvaluationSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.close()
        self.backend.close()

    @property
    def record(self) -> dict[str, Any]:
        """What scored the items (recorded in decision.json)."""
        return self.backend.record

    # --- the gate's fetch callback -----------------------------------------------------------------------

    def fetch(self, request: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, np.ndarray]]:
        """Metric vectors of each requested arm on the first n items of each task (sampled order)."""
        self.progress.expect({(arm, task): self.tasks[task].size for arm, sizes in request.items() for task in sizes})
        by_sizes: dict[tuple[tuple[str, int], ...], list[Arm]] = {}
        for arm, sizes in request.items():
            by_sizes.setdefault(tuple(sorted(sizes.items())), []).append(self.arms[arm])
        for sizes, arms in by_sizes.items():
            self.items.update(self._evaluate(arms, dict(sizes)))
        if not self._checked and {BASE, BASELINE} <= set(request):
            check_applied(self.items, list(self.tasks))
            self._checked = True
        return {arm: {task: self.vector(arm, task) for task in sizes} for arm, sizes in request.items()}

    @property
    def progress(self) -> Progress:
        """One bar for every look (started on the first)."""
        if self._progress is None:
            self._progress = Progress()
        return self._progress

    def vector(self, arm: str, task: str) -> np.ndarray:
        resolved = self.tasks[task]
        try:
            return np.array([item.metrics[resolved.metric_key] for item in self.items[(arm, task)]], dtype=np.float64)
        except KeyError:
            raise RuntimeFailure(f"{arm} / {task}: an item lacks metric {resolved.metric_key!r}") from None

    # --- evaluation ----------------------------------------------------------------------------------------

    def _evaluate(self, arms: list[Arm], sizes: dict[str, int]) -> dict[tuple[str, str], list[Item]]:
        tasks = list(self.tasks.values())
        stored = self._from_store(arms, tasks, sizes)
        if stored is not None and self._canary_file().is_file():
            self.canary = self.canary or read_json(self._canary_file())
            for (arm, task), items in stored.items():
                self.progress.add(arm, task, (i.doc_id for i in items), scored=False)
            return stored
        return self._scored(arms, tasks, sizes)

    def _from_store(self, arms: list[Arm], tasks: list[ResolvedTask], sizes: dict[str, int]
                    ) -> dict[tuple[str, str], list[Item]] | None:
        """Every requested item from the store, or None when anything is missing."""
        out = {}
        engine_key = self.backend.store_key()
        for task in tasks:
            name = task.request.name
            wanted = task.doc_ids(sizes.get(name))
            built = BuiltTask(task)
            for arm in arms:
                stored = stored_items(self.store, arm, built, self.template(), wanted, engine_key)
                if any(d not in stored for d in wanted):
                    return None
                out[(arm.name, name)] = [stored[d] for d in wanted]
        return out

    def template(self) -> str | None:
        """The chat template that renders prompts (part of the store key), when a task asks for one."""
        return self.backend.template() if any(t.request.chat_template for t in self.tasks.values()) else None

    def _scored(self, arms: list[Arm], tasks: list[ResolvedTask], sizes: dict[str, int]
                ) -> dict[tuple[str, str], list[Item]]:
        try:
            items = evaluate(self.backend, arms, tasks, self.store, sizes, progress=self.progress,
                             template=self.template(), start=self._start)
        except ReleaseGateError:
            raise
        except Exception as exc:  # engine or server death and the like: keep the cause, say what survives
            raise RuntimeFailure(f"evaluation failed: {type(exc).__name__}: {exc}; every finished chunk of items "
                                 f"is kept in {self.store.root}: run again with --resume to continue") from exc
        if not self._started:  # another run scored every missing item while this one waited on the store's locks
            self.canary = self.canary or read_json(self._canary_file()) or {
                "probe": "not run: every item was scored by another run on this store"}
        return items

    def _start(self) -> None:
        """The backend, started once; the probe canary runs (and is recorded beside the store) here."""
        if self._started:
            return
        logger.info("starting the %s backend for %d arms", self.backend.name, len(self.arms))
        self.backend.start()
        self._started = True
        self.canary = self.backend.probe(list(self.arms.values()))
        self._canary_file().parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._canary_file(), self.canary)

    def _canary_file(self) -> Path:
        arms = sorted(a.sha256 for a in self.arms.values())
        return self.store.root / f"canary-{content_key([self.backend.store_key(), arms])}.json"


def check_applied(items: Mapping[tuple[str, str], list[Item]], tasks: Sequence[str]) -> None:
    """Per-item canary: an adapter the engine ignored answers exactly like the base model everywhere."""
    if all(same_items(items[(BASE, t)], items[(BASELINE, t)]) for t in tasks):
        raise RuntimeFailure("adapter not applied by the engine: baseline's answers and scores equal the base "
                             "model's on every item of every task")


def same_items(a: Sequence[Item], b: Sequence[Item]) -> bool:
    """Same answers, scores and (multiple choice) log-likelihoods on every item."""
    def fields(items: Sequence[Item]) -> list[tuple]:
        return [(i.doc_id, i.response, i.metrics, i.choice_logprobs) for i in items]

    return fields(a) == fields(b)
